"""The checker's reading of alert conditions (tools/promcheck.py), without a Prometheus."""

from tools.promcheck import condition_operands, dashboard_queries, rule_queries


def test_an_alert_condition_is_checked_by_the_left_side_of_each_comparison():
    assert condition_operands('a:ratio{service="router"} > (14.4 * 0.001) and b:ratio{service="router"} > 0.1') \
        == ('a:ratio{service="router"}', 'b:ratio{service="router"}')
    assert condition_operands("max by (job, upstream) (breaker_state) == 2") == ("max by (job, upstream) (breaker_state)",)
    assert condition_operands("x > on (alias) group_left () (min by (alias) (x) + 0.05)") == ("x",)


def test_operators_inside_selectors_strings_and_calls_are_not_split():
    expr = 'sum(rate(m{code=~"A|B",le!="1"}[5m])) > 3 * sum(rate(m{note="x > y and z"}[1h]))'
    assert condition_operands(expr) == ('sum(rate(m{code=~"A|B",le!="1"}[5m]))',)
    assert condition_operands("errors_total or other_total") == ("errors_total", "other_total")
    assert condition_operands("vector(1)") == ("vector(1)",)


def test_every_dashboard_target_and_rule_is_collected():
    dashboard = dashboard_queries()
    rules = rule_queries()
    assert len(dashboard) >= 30 and all(q.data == (q.expr,) for q in dashboard)
    alerts = [q for q in rules if ": alert " in q.source]
    assert len(alerts) >= 12
    assert all(q.data and all(operand in q.expr for operand in q.data) for q in alerts)
