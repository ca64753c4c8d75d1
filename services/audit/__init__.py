"""The suite's audit log: hash-chained JSON Lines, written off the request path.

chain.py seals and verifies records, log.py writes them from a bounded queue on
its own thread, fingerprint.py makes the keyed HMACs that stand in for text. The
package knows no service: a service builds its own records (dicts) and hands them
to an AuditLog.
"""
