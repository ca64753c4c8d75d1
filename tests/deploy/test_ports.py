"""The ports the deployments use agree with the services' own defaults."""

from tests.deploy.expected import PYTHON_SERVICES


def test_documented_ports_match_the_services_defaults():
    for name, (_, _, settings, port, metrics_port) in PYTHON_SERVICES.items():
        fields = settings.model_fields
        # A default of 0 means "pick a free port" (the router's); otherwise it must agree.
        assert fields["port"].default in (0, port), name
        assert fields["metrics_port"].default in (0, metrics_port), name
