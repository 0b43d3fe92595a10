"""MeshConfig's access-log fields: what is accepted, and errors that name the field."""

from __future__ import annotations

import pytest

from vmagent.common.errors import ConfigError
from vmagent.controlplane.snapshots import mesh_options
from vmagent.controlplane.translate.accesslog import DEFAULT_TEXT_FORMAT, access_log


def test_no_file_means_no_access_log() -> None:
    assert mesh_options("cluster.local", {}).access_log is None
    assert (
        mesh_options("cluster.local", {"accessLogFile": "", "accessLogEncoding": "JSON"}).access_log is None
    )


def test_text_and_json_settings_become_envoy_file_loggers() -> None:
    text = mesh_options("cluster.local", {"accessLogFile": "/dev/stdout"}).access_log
    assert text is not None and text.text_format == DEFAULT_TEXT_FORMAT
    log = access_log(text)
    assert log.name == "envoy.access_loggers.file"
    custom = mesh_options(
        "cluster.local",
        {
            "accessLogFile": "/var/log/a.log",
            "accessLogEncoding": "JSON",
            "accessLogFormat": '{"c": "%RESPONSE_CODE%"}',
        },
    ).access_log
    assert custom is not None and custom.json_format == (("c", "%RESPONSE_CODE%"),)


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"accessLogFile": "/dev/stdout", "accessLogEncoding": "XML"}, "accessLogEncoding"),
        ({"accessLogFile": "relative.log"}, "accessLogFile"),
        (
            {"accessLogFile": "/dev/stdout", "accessLogEncoding": "JSON", "accessLogFormat": "not json"},
            "accessLogFormat",
        ),
        ({"accessLogFile": 3}, "accessLogFile"),
        ({"accesLogFile": "/dev/stdout"}, "accesLogFile"),
    ],
)
def test_bad_values_name_the_field(cfg: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        mesh_options("cluster.local", cfg, source="/etc/vmagent-cp/mesh.yaml")
    assert f"/etc/vmagent-cp/mesh.yaml: {field}:" in str(err.value)
