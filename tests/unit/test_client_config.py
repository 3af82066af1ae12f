"""The command-line tools' config reader (hakuriver_common/client_config.py) against
load_config: its table of fields is config.py's, and whatever it reads by itself, load_config
reads the same; whatever load_config refuses, it leaves to load_config."""

from __future__ import annotations

import json
import math
import os
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import annotated_types
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pydantic import BaseModel

from hakuriver_common import client_config
from hakuriver_common.client_config import (
    MAX_RUNNER_TIMEOUT,
    SCHEMA,
    PlainConfig,
    load_client_config,
    read_plain,
)
from hakuriver_common.config import Config, ConfigError, load_config

KINDS = {
    str: "str",
    bool: "bool",
    int: "int",
    float: "float",
    Path: "path",
    Path | None: "path?",
    list[str]: "list[str]",
}
VALIDATORS = {
    "_known_network": "task_network",
    "_absolute": "absolute_paths",
    "_mounts": "mounts",
    "_user_name": "user_name",
    "_runner_name": "runner_name",
    "_dialable": "dialable",
}


def _check(model: type[BaseModel], name: str) -> str | None:
    info = model.model_fields[name]
    lows = [m.ge for m in info.metadata if isinstance(m, annotated_types.Ge)]
    highs = [m.le for m in info.metadata if isinstance(m, annotated_types.Le)]
    if highs == [65535]:
        assert lows == [0]
        return "port"
    if highs:
        assert len(lows) == 1, (model, name, "an upper bound needs a lower one")
        return f"{lows[0]}..{highs[0]}"
    checks = [f">{m.gt}" for m in info.metadata if isinstance(m, annotated_types.Gt)]
    checks += [f">={low}" for low in lows]
    for decorator in model.__pydantic_decorators__.field_validators.values():
        if name in decorator.info.fields:
            checks.append(VALIDATORS[decorator.cls_var_name])
    assert len(checks) <= 1, (model, name, checks)
    return checks[0] if checks else None


def test_the_table_is_config_py() -> None:
    """A field added to or changed in config.py must be added to or changed in SCHEMA."""
    derived: dict[str, dict[str, tuple[str, Any, str | None]]] = {}
    for section, info in Config.model_fields.items():
        if section in client_config.NOT_READ_HERE:
            continue
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        derived[section] = {
            name: (
                KINDS[field.annotation],  # type: ignore[index]
                field.get_default(call_default_factory=True),
                _check(model, name),
            )
            for name, field in model.model_fields.items()
        }
    assert derived == SCHEMA
    assert set(Config.model_fields) == set(SCHEMA) | client_config.NOT_READ_HERE


def _typed(values: Mapping[str, Any]) -> dict[str, tuple[type, Any]]:
    return {key: (type(value), value) for key, value in values.items()}


def _same(plain: PlainConfig, full: Config) -> None:
    for section in SCHEMA:
        ours, theirs = vars(getattr(plain, section)), getattr(full, section).model_dump()
        assert _typed(ours) == _typed(theirs), section
    assert plain.host_target == full.host_target
    assert plain.tls.path("ca_file") == full.tls.path("ca_file")


def _full(path: Path, environ: Mapping[str, str]) -> Config | ConfigError:
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.upper().startswith("HAKURIVER_")]:
            patch.delenv(name)
        for name, value in environ.items():
            patch.setenv(name, value)
        try:
            return load_config(path)
        except ConfigError as exc:
            return exc


# ----- TOML and environments, both sensible and not -----------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")  # TOML: escaped
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _toml(document: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, table in document.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


WORDS = st.sampled_from(["", "host", "none", "/abs", "rel/x", "~/x", "a b", "127.0.0.1"])
# Values near a field's edge: the right type at or past its bounds, types pydantic coerces
# (or refuses), and anything at all.
EDGES: list[Any] = [0, 1, -1, 2, 0.0, 1.0, -0.0, 0.5, 1.5, math.nan, math.inf, 2**63, True, False]
EDGES += ["", "x", "1", "true", "host", "none", "bridge", "/abs", "rel"]
EDGES += [[], ["/x"], ["rel"], [1], [True], ["/x", "y"], ["/a:/b"], ["/a:/b:ro", "nocolon"]]
ANY_VALUE = st.one_of(
    st.sampled_from(EDGES),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.lists(st.one_of(WORDS, st.integers(0, 2)), max_size=3),
)
ENV_TEXT = st.one_of(
    st.sampled_from(
        [
            *("", "0", "1", "2", "-1", "+7", "9000", "07", "-0", "5.0", "5.", ".5", "-2.5", "1e3"),
            *("nan", "inf", " 5", "5 ", "1_000", "\u0663", "0x10"),
            *("true", "False", "YES", "off", "t", "n", "maybe", " true", "on "),
            *("host", "none", "/abs", "rel", "~/x", "[]", '["/x"]', '{"host_port": 1}', "null"),
        ]
    ),
    st.text(alphabet=string.printable, max_size=6),
)


def _valid_value(kind: str, check: str | None) -> st.SearchStrategy[Any]:
    if check == "task_network":
        return st.sampled_from(["host", "none"])
    if check == "absolute_paths":
        return st.lists(st.sampled_from(["/data", "/scratch/x"]), max_size=2)
    if check == "mounts":
        return st.lists(st.sampled_from(["/data:/data", "/srv/x:/x:ro"]), max_size=2)
    if check == "user_name":
        return st.sampled_from(["admin", "root", "ops.team-1"])
    if check == "runner_name":
        return st.sampled_from(["", "node-7", "gpu_a.lab"])
    if check == "dialable":
        return st.sampled_from(["127.0.0.1", "river.lab.example", "node_7", "[::1]", "fe80::1"])
    if kind == "float" and check is not None and ".." in check:
        low, high = (float(edge) for edge in check.split(".."))
        return st.one_of(st.floats(low, high), st.integers(math.ceil(low), int(high)))
    if kind == "float":
        low = {">0": 0.001, ">=0": 0.0, ">1": 1.001}.get(check or "", -1e6)
        return st.one_of(st.floats(low, 1e6), st.integers(math.ceil(low), 10**6))
    if check == "port":
        return st.integers(0, 65535)
    if kind == "int" and check is not None:
        return st.integers({">=0": 0, ">0": 1}[check], 2**40)
    return {
        "str": st.text(max_size=8),
        "bool": st.booleans(),
        "int": st.integers(-(2**40), 2**40),
        "path": WORDS.filter(bool),  # an empty one is refused
        "path?": WORDS,
        "list[str]": st.lists(WORDS, max_size=3),
    }[kind]


@st.composite
def documents(draw: st.DrawFn, valid: bool) -> dict[str, dict[str, Any]]:
    """A config of valid values; unless ``valid``, then up to two changes of any kind (a
    value of any type, an unknown key or section, a webhook)."""
    document: dict[str, dict[str, Any]] = {}
    for section in draw(st.lists(st.sampled_from(list(SCHEMA)), max_size=5, unique=True)):
        fields = SCHEMA[section]
        keys = draw(st.lists(st.sampled_from(list(fields)), max_size=4, unique=True))
        document[section] = {
            key: draw(_valid_value(*_kind_and_check(section, key))) for key in keys
        }
    if valid:
        timing = document.get("timing", {})
        interval = timing.get("heartbeat_interval", 5.0)
        if interval * timing.get("heartbeat_timeout_factor", 6.0) > MAX_RUNNER_TIMEOUT:
            # The two keys together are bounded too: a factor that keeps the product valid.
            most = MAX_RUNNER_TIMEOUT / interval / 2
            timing["heartbeat_timeout_factor"] = draw(st.floats(1.001, most))
        return document
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        section = draw(st.sampled_from([*SCHEMA, "bogus"]))
        key = draw(st.sampled_from([*SCHEMA.get(section, {}), "bogus_key"]))
        document.setdefault(section, {})[key] = draw(ANY_VALUE)
    if draw(st.integers(0, 9)) == 0:
        document["webhooks"] = {}
    return document


def _kind_and_check(section: str, key: str) -> tuple[str, str | None]:
    kind, _, check = SCHEMA[section][key]
    return kind, check


@st.composite
def environments(draw: st.DrawFn, valid: bool) -> dict[str, str]:
    """Overrides of valid text; unless ``valid``, then up to two variables of any text,
    some naming no field, a whole section or a webhook."""
    simple = [
        f"{section}__{key}"
        for section, fields in SCHEMA.items()
        for key, (kind, _, check) in fields.items()
        if kind not in ("path?", "list[str]") and check is None
    ]
    environ: dict[str, str] = {}
    for name in draw(st.lists(st.sampled_from(simple), max_size=3, unique=True)):
        section, _, key = name.partition("__")
        kind, _ = _kind_and_check(section, key)
        text = draw(
            {
                "str": st.text(alphabet=string.ascii_letters, max_size=5),
                "path": WORDS.filter(bool),
                "bool": st.sampled_from(["true", "false", "1", "0", "Yes", "off"]),
                "int": st.integers(0, 65535).map(str),
                "float": st.sampled_from(["2", "2.5", "100", "7.25"]),
            }[kind]
        )
        environ[draw(_spelled(name))] = text
    if valid:
        return environ
    odd = ["network", "network__bogus", "webhooks__0__url", "config", "token", "other"]
    every = [f"{s}__{k}" for s, fields in SCHEMA.items() for k in fields]
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        name = draw(st.sampled_from([*every, *odd]))
        environ[draw(_spelled(name))] = draw(ENV_TEXT)
    return environ


def _spelled(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([f"HAKURIVER_{name.upper()}", f"hakuriver_{name}"])


FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(document=documents(valid=False), environ=environments(valid=False))
def test_whatever_it_reads_load_config_reads_the_same(
    tmp_path: Path, document: dict[str, dict[str, Any]], environ: dict[str, str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(_toml(document))
    plain = read_plain(path, environ)
    if plain is not None:
        full = _full(path, environ)
        assert isinstance(full, Config), (document, environ, full)
        _same(plain, full)


@FUZZ
@given(document=documents(valid=True), environ=environments(valid=True))
def test_a_valid_config_is_read_without_pydantic(
    tmp_path: Path, document: dict[str, dict[str, Any]], environ: dict[str, str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(_toml(document))
    plain = read_plain(path, environ)
    assert plain is not None, (document, environ)
    full = _full(path, environ)
    assert isinstance(full, Config)
    _same(plain, full)


EVERY_FIELD = [(section, key) for section, fields in SCHEMA.items() for key in fields]
ENV_EDGES = [
    *("", "0", "1", "2", "-1", "+7", "9000", "07", "-0", "5.0", "5.", ".5", "-2.5", "1e3"),
    *("nan", "inf", " 5", "5 ", "1_000", "\u0663", "0x10", "99999999999999999999"),
    *("true", "False", "YES", "off", "t", "n", "maybe", " true", "on "),
    *("host", "none", "bridge", "/abs", "rel", "~/x", "[]", '["/x"]', "null"),
]


@pytest.mark.parametrize(("section", "key"), EVERY_FIELD)
def test_every_field_at_its_edges(tmp_path: Path, section: str, key: str) -> None:
    """Each field alone, set to each edge value in the file and to each edge text in the
    environment: read the same, or left to load_config."""
    path = tmp_path / "config.toml"
    for value in EDGES:
        path.write_text(_toml({section: {key: value}}))
        plain = read_plain(path, {})
        if plain is not None:
            full = _full(path, {})
            assert isinstance(full, Config), (value, full)
            _same(plain, full)
    path.write_text("")
    variable = f"HAKURIVER_{section.upper()}__{key.upper()}"
    for text in ENV_EDGES:
        plain = read_plain(path, {variable: text})
        if plain is not None:
            full = _full(path, {variable: text})
            assert isinstance(full, Config), (text, full)
            _same(plain, full)


def test_no_file_means_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.upper().startswith("HAKURIVER_")]:
        monkeypatch.delenv(name)
    plain = read_plain(None, {})
    assert plain is not None
    _same(plain, Config())


@pytest.mark.parametrize(
    "text",
    [
        "[[webhooks]]\nurl = 'http://127.0.0.1:9/x'\n",  # left to load_config, and accepted
    ],
)
def test_what_it_cannot_read_goes_to_load_config(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert read_plain(path, {}) is None
    assert isinstance(load_client_config(path), Config)


@pytest.mark.parametrize(
    "text",
    [
        "[timing]\nheartbeat_interval = -1\n",
        "[nonsense]\nx = 1\n",
        "[network]\nhost_prot = 9000\n",  # a typo of a key
        "[network]\nhost_port = 70000\n",
        "[network]\nhost_port = '9000'\n",  # TOML has types: a string is no port
        "[dashboard]\nport = -1\n",
        "[auth]\ndefault_task_network = 'bridge'\n",
        "[[webhooks]]\nurl = 'ftp://example.invalid/x'\n",
        "[network\n",
    ],
)
def test_errors_are_load_configs(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as full:
        load_config(path)
    with pytest.raises(ConfigError) as client:
        load_client_config(path)
    assert str(client.value) == str(full.value)


def test_a_missing_file_is_the_same_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as client:
        load_client_config(tmp_path / "nope.toml")
    assert "does not exist (create one: hakuriver.init config)" in str(client.value)


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[network]\nhost_port = 9100\nhost_reachable_address = '10.0.0.1'\n")
    monkeypatch.setenv("HAKURIVER_NETWORK__HOST_PORT", "9200")
    monkeypatch.setenv("HAKURIVER_TOKEN", "not config")
    config = load_client_config(path)
    assert isinstance(config, PlainConfig)
    assert config.host_target == "10.0.0.1:9200"
