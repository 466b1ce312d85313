"""Settings: defaults, file, environment overrides and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcd_node.cli import main
from bcd_node.settings import (
    DEFAULT_CONFIG,
    MAX_AUTO_BUILDERS,
    Settings,
    SettingsError,
    load_settings,
    mask_url,
    output_builder_processes,
    settings_from_mapping,
    to_display_dict,
)


def test_default_config_file_matches_code_defaults(tmp_path: Path) -> None:
    from_file = load_settings(DEFAULT_CONFIG, environ={})
    from_code = settings_from_mapping({}, environ={}, source=from_file.source)
    assert from_file == from_code
    assert from_file.dicom.ae_title == "BCD_NODE"
    assert from_file.dicom.port == 11112
    assert (from_file.web.host, from_file.web.port) == ("127.0.0.1", 8080)
    assert from_file.database_url.startswith("sqlite:///")
    assert from_file.database_url.endswith("/data/bcd-node.db")


def test_default_config_lists_every_key() -> None:
    import tomllib
    text = DEFAULT_CONFIG.read_text()
    raw = tomllib.loads(text)
    shown = to_display_dict(settings_from_mapping({}, environ={}))
    for section, keys in shown.items():
        if section in ("destinations", "lis"):
            assert f"[[{section}]]" in text  # documented as a commented example
            continue
        # review_threshold is unset by default (the model's operating point), shown commented
        commented = {"review_threshold"} if section == "model" else set()
        assert set(raw[section]) == set(keys) - commented, section
        for key in commented:
            assert f"\n# {key} = " in text


def test_review_threshold_follows_the_model_unless_set(tmp_path: Path) -> None:
    from bcd_node.settings import model_review_threshold
    bundled = model_review_threshold(None)
    assert bundled is not None and 0.5 <= bundled <= 0.95  # the bundled manifest's review entry
    assert settings_from_mapping({}, environ={}).model.review_threshold == bundled
    assert settings_from_mapping({"model": {"review_threshold": 0.6}},
                                 environ={}).model.review_threshold == 0.6
    assert settings_from_mapping({}, environ={"BCD_MODEL_REVIEW_THRESHOLD": "0.7"}
                                 ).model.review_threshold == 0.7
    # A model whose manifest states no operating point: the code's default.
    own = tmp_path / "own"
    own.mkdir()
    (own / "manifest.json").write_text('{"name": "own"}')
    (own / "own.weights.h5").write_bytes(b"")
    settings = settings_from_mapping({"model": {"weights": str(own / "own.weights.h5")}},
                                     environ={})
    assert settings.model.review_threshold == 0.6


def test_production_example_loads(tmp_path: Path) -> None:
    """config/production.toml (cited by the docs) is valid, key by key, with the loader."""
    import tomllib
    path = DEFAULT_CONFIG.parent / "production.toml"
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    # The TLS files it names exist only on the real machine: stand-ins here.
    for key in ("tls_certificate", "tls_private_key", "tls_client_ca"):
        assert raw["dicom"][key].startswith("/etc/bcd-node/tls/"), key
        stand_in = tmp_path / Path(raw["dicom"][key]).name
        stand_in.write_text("PEM")
        raw["dicom"][key] = str(stand_in)
    s = settings_from_mapping(raw, environ={}, source=path)
    assert s.database_url.startswith("postgresql+psycopg://")
    assert s.dicom.tls_client_ca is not None and s.dicom.host == "0.0.0.0"
    assert (s.web.trusted_proxies, s.web.secure_cookies, s.web.host) == (1, "true", "127.0.0.1")
    assert s.destinations[0].name == "pacs" and s.logging.format == "json"
    assert ":" not in s.database.url.split("//", 1)[1].split("@", 1)[0]  # no password in it
    assert "proxy_set_header X-Forwarded-For" in path.read_text(encoding="utf-8")


def test_environment_overrides_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[dicom]\nport = 104\nallowed_calling_aes = ["A"]\n')
    s = load_settings(cfg, environ={"BCD_DICOM_PORT": "11113",
                                    "BCD_DICOM_ALLOWED_CALLING_AES": "SCANNER1, PACS",
                                    "BCD_DICOM_REQUIRE_CALLED_AE": "false",
                                    "BCD_STORAGE_MIN_FREE_DISK": "2GiB",
                                    "BCD_DICOM_MAX_DATASET_BYTES": "512MiB",
                                    "BCD_DICOM_PREASSOCIATION_TIMEOUT": "2.5",
                                    "BCD_DATABASE_URL": "postgresql+psycopg://u:pw@db/bcd",
                                    "BCD_ADMIN_PASSWORD": "not a setting"})
    assert s.dicom.port == 11113
    assert s.dicom.allowed_calling_aes == ("SCANNER1", "PACS")
    assert s.dicom.require_called_ae is False
    assert s.storage.min_free_disk == 2 * 1024**3
    assert s.dicom.max_dataset_bytes == 512 * 1024**2
    assert s.dicom.preassociation_timeout == 2.5
    assert s.database_url == "postgresql+psycopg://u:pw@db/bcd"


def test_output_builders_are_auto_by_default_or_a_number() -> None:
    assert settings_from_mapping({}, environ={}).workers.output_builders is None
    assert to_display_dict(settings_from_mapping({}, environ={}))["workers"][
        "output_builders"] == "auto"
    for raw, env, expected in [({"output_builders": "Auto"}, {}, None),
                               ({"output_builders": 3}, {}, 3),
                               ({"output_builders": 0}, {}, 0),
                               ({}, {"BCD_WORKERS_OUTPUT_BUILDERS": "0"}, 0),
                               ({"output_builders": 2}, {"BCD_WORKERS_OUTPUT_BUILDERS": "auto"},
                                None)]:
        loaded = settings_from_mapping({"workers": raw}, environ=env).workers.output_builders
        assert loaded == expected, (raw, env)


@pytest.mark.parametrize(("setting", "cores", "processes"), [
    (None, 1, 0),  # one core: building in the worker, no process to take turns with
    (None, 2, 2),  # the project's machine: 2 builders beat 0 and 3 (docs/operations.md)
    (None, 6, 6),
    (None, 64, MAX_AUTO_BUILDERS),  # about 250 MB each
    (0, 16, 0),
    (3, 2, 3),
])
def test_auto_output_builders_follow_the_cores(setting: int | None, cores: int,
                                               processes: int) -> None:
    assert output_builder_processes(setting, cores) == processes


def test_auto_output_builders_count_the_cores_this_process_may_use() -> None:
    import os
    cores = len(os.sched_getaffinity(0))
    assert output_builder_processes(None) == output_builder_processes(None, cores)


def test_settings_are_frozen() -> None:
    s = settings_from_mapping({}, environ={})
    with pytest.raises(AttributeError):
        s.dicom.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(("raw", "env", "key"), [
    ({"dicom": {"port": 70000}}, {}, "dicom.port"),
    ({}, {"BCD_DICOM_PORT": "70000"}, "dicom.port"),
    ({}, {"BCD_DICOM_PORT": "eleven"}, "dicom.port"),
    ({"dicom": {"port": "11112"}}, {}, "dicom.port"),
    ({"dicom": {"prot": 104}}, {}, "dicom.prot"),
    ({}, {"BCD_DICOM_PROT": "104"}, "dicom.prot"),
    ({}, {"BCD_NOSECTION_KEY": "1"}, "BCD_NOSECTION_KEY"),
    ({"dicmo": {}}, {}, "dicmo"),
    ({"dicom": {"ae_title": "A_TITLE_LONGER_THAN_16"}}, {}, "dicom.ae_title"),
    ({"dicom": {"ae_title": "BAD\\AE"}}, {}, "dicom.ae_title"),
    ({"dicom": {"allowed_calling_aes": "SCANNER"}}, {}, "dicom.allowed_calling_aes"),
    ({"dicom": {"max_associations": 0}}, {}, "dicom.max_associations"),
    ({"dicom": {"acse_timeout": 0}}, {}, "dicom.acse_timeout"),
    ({"dicom": {"require_called_ae": "yes"}}, {}, "dicom.require_called_ae"),
    ({"dicom": {"max_pdu": 100}}, {}, "dicom.max_pdu"),
    ({"dicom": {"preassociation_timeout": 0}}, {}, "dicom.preassociation_timeout"),
    ({"dicom": {"max_dataset_bytes": "lots"}}, {}, "dicom.max_dataset_bytes"),
    ({"dicom": {"max_dataset_bytes": "1KiB"}}, {}, "dicom.max_dataset_bytes"),
    ({}, {"BCD_DICOM_MAX_DATASET_BYTES": "-5"}, "dicom.max_dataset_bytes"),
    ({"storage": {"min_free_disk": "lots"}}, {}, "storage.min_free_disk"),
    ({"storage": {"data_dir": ""}}, {}, "storage.data_dir"),
    ({"database": {"url": "mysql://x/y"}}, {}, "database.url"),
    ({"model": {"weights": "/nonexistent/model.json"}}, {}, "model.weights"),
    ({"model": {"precision": "fp8"}}, {}, "model.precision"),
    ({"model": {"review_threshold": 1.5}}, {}, "model.review_threshold"),
    ({"model": {"default_um_per_pixel": 0.0}}, {}, "model.default_um_per_pixel"),
    ({"model": {"default_um_per_pixel": "small"}}, {}, "model.default_um_per_pixel"),
    ({"workers": {"batch_size": 0}}, {}, "workers.batch_size"),
    ({"workers": {"niceness": 20}}, {}, "workers.niceness"),
    ({"workers": {"output_builders": -1}}, {}, "workers.output_builders"),
    ({"workers": {"output_builders": "many"}}, {}, "workers.output_builders"),
    ({"workers": {"output_builders": 2.5}}, {}, "workers.output_builders"),
    ({}, {"BCD_WORKERS_OUTPUT_BUILDERS": "some"}, "workers.output_builders"),
    ({}, {"BCD_WORKERS_BATCH_SIZE": "lots"}, "workers.batch_size"),
    ({"web": {"port": 0}}, {}, "web.port"),
    ({"web": {"host": "not a host!"}}, {}, "web.host"),
    ({"web": {"session_lifetime_hours": 0}}, {}, "web.session_lifetime_hours"),
    ({"web": {"session_lifetime_hours": 1, "idle_timeout_minutes": 90}}, {},
     "web.session_lifetime_hours"),
    ({"web": {"trusted_proxies": -1}}, {}, "web.trusted_proxies"),
    ({"web": {"metrics_token": "short"}}, {}, "web.metrics_token"),
    ({}, {"BCD_WEB_METRICS_TOKEN": "has spaces in the token"}, "web.metrics_token"),
    ({"web": {"upload_memory": "1MB"}}, {}, "web.upload_memory"),
    ({"web": {"upload_memory": "plenty"}}, {}, "web.upload_memory"),
    ({"uids": {"root": "1.2.03"}}, {}, "uids.root"),
    ({"uids": {"root": "abc"}}, {}, "uids.root"),
    ({"retention": {"images_days": -1}}, {}, "retention.images_days"),
    ({"logging": {"format": "xml"}}, {}, "logging.format"),
    ({"destinations": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1"}]}, {},
     "destinations[0].port"),
    ({"destinations": [{"name": "pacs", "ae_title": "ORTHANC", "host": "h", "port": 99999}]}, {},
     "destinations[0].port"),
    ({"destinations": [{"name": "p", "ae_title": "A", "host": "h", "port": 1, "tls": True}]}, {},
     "destinations[0].tls"),
    ({"destinations": [{"name": "p", "ae_title": "A", "host": "h", "port": 1},
                       {"name": "p", "ae_title": "B", "host": "h", "port": 2}]}, {},
     "destinations[1].name"),
])
def test_invalid_settings_name_the_key(raw: dict, env: dict, key: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_mapping(raw, environ=env)
    assert info.value.key == key
    assert key in str(info.value)


def test_missing_weights_file_names_key_and_value(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(SettingsError, match=r"model\.weights") as info:
        settings_from_mapping({"model": {"weights": str(missing)}}, environ={})
    assert str(missing) in str(info.value)


def test_destinations_parsed() -> None:
    s = settings_from_mapping({"destinations": [
        {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}]}, environ={})
    assert s.destinations[0].ae_title == "ORTHANC"
    assert s.destinations[0].port == 4242


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[dicom\nport=1")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(bad, environ={})
    with pytest.raises(SettingsError, match="file not found"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_relative_paths_resolve_against_working_directory(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = settings_from_mapping({"storage": {"data_dir": "var/data"}}, environ={})
    assert s.storage.data_dir == tmp_path / "var/data"


def test_new_web_keys_parse_and_the_token_is_masked() -> None:
    s = settings_from_mapping({"web": {"upload_memory": "512MiB", "trusted_proxies": 1}},
                              environ={"BCD_WEB_METRICS_TOKEN": "0123456789abcdef-token",
                                       "BCD_WEB_SESSION_LIFETIME_HOURS": "8"})
    assert s.web.upload_memory == 512 * 1024**2 and s.web.trusted_proxies == 1
    assert s.web.session_lifetime_hours == 8
    assert s.web.metrics_token == "0123456789abcdef-token"
    assert to_display_dict(s)["web"]["metrics_token"] == "***"
    with pytest.raises(SettingsError) as info:
        settings_from_mapping({"web": {"metrics_token": "a b"}}, environ={})
    assert "a b" not in str(info.value)  # a secret is not echoed, even a bad one


def test_mask_url() -> None:
    assert mask_url("postgresql+psycopg://bcd:s3cret@db:5432/bcd") == \
        "postgresql+psycopg://bcd:***@db:5432/bcd"
    assert mask_url("sqlite:////x/y.db") == "sqlite:////x/y.db"


def test_config_show_prints_effective_settings(write_config, capsys, monkeypatch) -> None:
    cfg = write_config('[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\n'
                       'host = "127.0.0.1"\nport = 4242\n',
                       database_url="postgresql+psycopg://bcd:topsecret@db/bcd")
    monkeypatch.setenv("BCD_DICOM_AE_TITLE", "OTHER_AE")
    assert main(["--config", str(cfg), "config", "show"]) == 0
    out = capsys.readouterr().out
    import tomllib
    shown = tomllib.loads(out)
    assert shown["dicom"]["ae_title"] == "OTHER_AE"
    assert shown["destinations"][0]["name"] == "pacs"
    assert "topsecret" not in out
    assert shown["database"]["url"] == "postgresql+psycopg://bcd:***@db/bcd"


def test_config_show_bad_port_exits_2_naming_key(write_config, capsys, monkeypatch) -> None:
    cfg = write_config()
    monkeypatch.setenv("BCD_DICOM_PORT", "70000")
    assert main(["--config", str(cfg), "config", "show"]) == 2
    err = capsys.readouterr().err
    assert "dicom.port" in err and "70000" in err


def test_settings_type() -> None:
    assert isinstance(settings_from_mapping({}, environ={}), Settings)


@pytest.mark.parametrize("tls, key", [
    ({"tls_ca": "missing.pem"}, "tls_ca"),
    ({"tls_ca": "ca.pem", "tls_certificate": "missing.pem", "tls_private_key": "client.key"},
     "tls_certificate"),
    ({"tls_ca": "ca.pem", "tls_certificate": "client.pem", "tls_private_key": "missing.key"},
     "tls_private_key"),
    ({"tls_ca": "ca.pem", "tls_certificate": "client.pem"}, "tls_private_key"),
    ({"tls_ca": "ca.pem", "tls_private_key": "client.key"}, "tls_certificate"),
    ({"tls_certificate": "client.pem", "tls_private_key": "client.key"}, "tls_certificate"),
    ({"tls_server_name": "pacs.example"}, "tls_server_name"),
    ({"tls_check_hostname": False}, "tls_check_hostname"),
    ({"tls_ca": "ca.pem", "tls_server_name": "not a host"}, "tls_server_name"),
    ({"tls_ca": "ca.pem", "tls_check_hostname": "no"}, "tls_check_hostname"),
])
def test_destination_tls_settings_name_the_key(tmp_path: Path, tls: dict, key: str) -> None:
    """A missing file, a certificate without its key (or the reverse), and TLS keys without the
    CA that makes the destination a TLS one are refused at load, naming the key."""
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("PEM")
    with pytest.raises(SettingsError) as info:
        settings_from_mapping({"destinations": [
            {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104, **tls}]},
            environ={}, base_dir=tmp_path)
    assert info.value.key == f"destinations[0].{key}"
    assert f"destinations[0].{key}" in str(info.value)


def test_destination_tls_paths_resolve_and_show(tmp_path: Path) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("PEM")
    s = settings_from_mapping({"destinations": [
        {"name": "pacs", "ae_title": "PACS", "host": "10.0.0.5", "port": 2762,
         "tls_ca": "ca.pem", "tls_certificate": "client.pem", "tls_private_key": "client.key",
         "tls_server_name": "pacs.hospital.example"},
        {"name": "plain", "ae_title": "PLAIN", "host": "10.0.0.6", "port": 104}]},
        environ={}, base_dir=tmp_path)
    tls, plain = s.destinations
    assert tls.tls_ca == tmp_path / "ca.pem" and tls.tls_private_key == tmp_path / "client.key"
    assert (tls.tls_server_name, tls.tls_check_hostname) == ("pacs.hospital.example", True)
    assert (plain.tls_ca, plain.tls_certificate, plain.tls_server_name) == (None, None, "")
    shown = to_display_dict(s)["destinations"]
    assert shown[0]["tls_ca"] == str(tmp_path / "ca.pem") and shown[1]["tls_ca"] == ""


@pytest.mark.parametrize("name", ["production.toml", "bcd-node.toml"])
def test_commented_tls_destination_examples_load(tmp_path: Path, name: str) -> None:
    """The commented TLS destination of each shipped config, uncommented, loads (its files
    replaced by stand-ins)."""
    import re
    import tomllib
    text = (DEFAULT_CONFIG.parent / name).read_text(encoding="utf-8")
    block = re.search(r"^# \[\[destinations\]\]\n((?:# .*\n)+)", text, re.MULTILINE)
    assert block is not None
    lines = [line[2:] for line in block.group(0).splitlines()
             if re.match(r"# (\[\[destinations\]\]|[a-z_]+ = )", line)]
    raw = tomllib.loads("\n".join(lines))
    dest = raw["destinations"][0]
    assert "tls_ca" in dest and "tls_private_key" in dest
    for key in ("tls_ca", "tls_certificate", "tls_private_key"):
        stand_in = tmp_path / f"{key}.pem"
        stand_in.write_text("PEM")
        dest[key] = str(stand_in)
    s = settings_from_mapping(raw, environ={})
    assert s.destinations[0].tls_ca == tmp_path / "tls_ca.pem"


def test_web_timezone_defaults_to_the_machines_zone_and_a_bad_one_names_its_key() -> None:
    import zoneinfo

    s = settings_from_mapping({"web": {"timezone": "Europe/Zurich"}}, environ={})
    assert s.web.tzinfo == zoneinfo.ZoneInfo("Europe/Zurich")
    default = settings_from_mapping({}, environ={})
    assert default.web.timezone == "" and default.web.tzinfo is not None
    with pytest.raises(SettingsError, match="web.timezone"):
        settings_from_mapping({"web": {"timezone": "Mars/Olympus_Mons"}}, environ={})
    with pytest.raises(SettingsError, match="web.timezone"):
        settings_from_mapping({}, environ={"BCD_WEB_TIMEZONE": "../../etc/passwd"})


def test_lis_destinations_are_read_and_a_bad_value_names_its_key(tmp_path) -> None:
    from bcd_node.settings import settings_from_mapping

    lis = {"name": "lab", "host": "127.0.0.1", "port": 2575, "receiving_application": "LIS"}
    settings = settings_from_mapping({"lis": [lis]}, {}, base_dir=tmp_path)
    (got,) = settings.lis
    assert (got.name, got.port, got.sending_application, got.tls_ca) == (
        "lab", 2575, "BCD-NODE", None)
    for change, key in (({"receiving_application": "A|B"}, "lis[0].receiving_application"),
                        ({"sending_facility": "X^Y"}, "lis[0].sending_facility"),
                        ({"port": 0}, "lis[0].port"),
                        ({"tls_ca": "missing.pem"}, "lis[0].tls_ca"),
                        ({"colour": "red"}, "lis[0].colour")):
        with pytest.raises(SettingsError) as caught:
            settings_from_mapping({"lis": [{**lis, **change}]}, {}, base_dir=tmp_path)
        assert caught.value.key == key
    with pytest.raises(SettingsError) as caught:
        settings_from_mapping({"lis": [{k: v for k, v in lis.items()
                                        if k != "receiving_application"}]}, {})
    assert caught.value.key == "lis[0].receiving_application"
    pacs = {"name": "lab", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
    with pytest.raises(SettingsError, match="unique") as caught:
        settings_from_mapping({"destinations": [pacs], "lis": [lis]}, {})
    assert caught.value.key == "lis[0].name"


def test_dicomweb_destinations_need_a_url_and_their_credentials() -> None:
    from bcd_node.settings import settings_from_mapping

    web = {"name": "cloud", "type": "dicomweb", "url": "https://archive.example/dicom-web",
           "auth": "bearer", "token": "s3cret"}
    (dest,) = settings_from_mapping({"destinations": [web]}, {}).destinations
    assert (dest.type, dest.url, dest.auth) == ("dicomweb", web["url"], "bearer")
    shown = to_display_dict(settings_from_mapping({"destinations": [web]}, {}))
    assert shown["destinations"][0]["token"] == "***"
    for change, key in (({"url": "archive.example"}, "destinations[0].url"),
                        ({"auth": "digest"}, "destinations[0].auth"),
                        ({"token": ""}, "destinations[0].token"),
                        ({"password": "x"}, "destinations[0].password"),
                        ({"port": 104}, "destinations[0].port"),
                        ({"type": "ftp"}, "destinations[0].type")):
        with pytest.raises(SettingsError) as caught:
            settings_from_mapping({"destinations": [{**web, **change}]}, {})
        assert caught.value.key == key
        assert "s3cret" not in str(caught.value)
    with pytest.raises(SettingsError) as caught:
        settings_from_mapping({"destinations": [{"name": "pacs", "host": "127.0.0.1",
                                                 "port": 104}]}, {})
    assert caught.value.key == "destinations[0].ae_title"


def test_one_port_for_the_console_and_the_listener_is_refused_naming_web_port() -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_mapping({"dicom": {"port": 11112}, "web": {"port": 11112}}, environ={})
    assert info.value.key == "web.port" and "the same port as dicom.port" in str(info.value)


def test_an_empty_destination_ae_title_says_what_is_missing() -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_mapping({"destinations": [{"name": "pacs", "ae_title": "",
                                                 "host": "127.0.0.1", "port": 104}]},
                              environ={})
    assert info.value.key == "destinations[0].ae_title"
    assert "= '': missing: a DICOM destination needs its AE title" in str(info.value)
