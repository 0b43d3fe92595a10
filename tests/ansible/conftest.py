"""The Ansible tier reuses the package tier's fixtures: the packages (current and a lower version)."""

from tests.package.conftest import packages, previous_packages  # noqa: F401 - pytest fixtures
