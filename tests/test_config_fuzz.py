"""Property-based fuzzing of the config checks: random wrong types, out-of-range values and
unknown keys, in the config object and as --config.k=v overrides, must end in a one-line
VlmjaxError (or pass), never in another exception."""

import math

import ml_collections
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TINY_CONFIG
from vlmjax.config import load_config_file, validate
from vlmjax.config.loading import apply_override
from vlmjax.errors import VlmjaxError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _paths(tree: dict, prefix: tuple = ()) -> tuple[list[tuple], list[tuple]]:
    """(leaf paths, section paths) of a nested dict; the root is a section."""
    leaves, sections = [], [prefix]
    for key, value in tree.items():
        if isinstance(value, dict):
            sub_leaves, sub_sections = _paths(value, prefix + (key,))
            leaves += sub_leaves
            sections += sub_sections
        else:
            leaves.append(prefix + (key,))
    return leaves, sections


@pytest.fixture(scope="module")
def base(synthetic_data_dir) -> dict:
    config = load_config_file(TINY_CONFIG)
    config.data.dir = synthetic_data_dir
    validate(config, 8)  # the unmutated config is valid
    return config.to_dict()


LEAVES, SECTIONS = _paths(load_config_file(TINY_CONFIG).to_dict())

any_value = st.one_of(
    st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1e308, 1e-320]),
    st.text(max_size=6), st.sampled_from(["", "none", "-1", "gelu", "cls", "B/16", "clip"]),
    st.lists(st.one_of(st.integers(-2, 300), st.floats(), st.text(max_size=3)), max_size=4),
    st.tuples(st.floats(allow_nan=True), st.integers()),
    st.dictionaries(st.sampled_from(["kind", "x", "name"]), st.integers(-1, 3), max_size=2))
key_name = st.from_regex(r"[a-z_][a-z0-9_]{0,9}", fullmatch=True)

mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(LEAVES), any_value),
    st.tuples(st.just("add"), st.sampled_from(SECTIONS), st.tuples(key_name, any_value)),
    st.tuples(st.just("section"), st.sampled_from([s for s in SECTIONS if s]), any_value),
)


def _mutate(tree: dict, kind: str, path: tuple, value) -> dict:
    tree = {k: _mutate(v, "copy", (), None) if isinstance(v, dict) else v for k, v in tree.items()}
    if kind == "copy":
        return tree
    node = tree
    for part in path[:-1] if kind != "add" else path:
        if not isinstance(node.get(part), dict):
            return tree  # an earlier mutation replaced this section
        node = node[part]
    if kind == "add":
        node[value[0]] = value[1]
    else:
        node[path[-1]] = value
    return tree


def _assert_one_line_error(call) -> None:
    try:
        call()
    except VlmjaxError as e:
        message = str(e)
        assert message and "\n" not in message, repr(message)
    # Any other exception propagates and fails the property.


@FUZZ
@given(mutations=st.lists(mutation, min_size=1, max_size=3))
def test_random_wrong_configs_fail_with_one_line(base, mutations):
    tree = base
    for kind, path, value in mutations:
        tree = _mutate(tree, kind, path, value)
    _assert_one_line_error(lambda: validate(ml_collections.ConfigDict(tree), 8))


override_text = st.one_of(
    st.text(max_size=8), st.sampled_from(["nan", "inf", "-inf", "1e400", "-5", "0", "()", "[]",
                                          "(1,)", "{}", "None", "True", "'x'", "[0.5]*3", "1_0"]),
    st.integers(-2 ** 40, 2 ** 40).map(str), st.floats().map(repr))


@FUZZ
@given(key=st.one_of(st.sampled_from([".".join(p) for p in LEAVES]),
                     st.lists(key_name, min_size=1, max_size=3).map(".".join)),
       raw=override_text)
def test_random_command_line_overrides_fail_with_one_line(base, key, raw):
    config = ml_collections.ConfigDict(base)

    def apply_and_validate() -> None:
        apply_override(config, key, raw)
        validate(config, 8)

    _assert_one_line_error(apply_and_validate)


def test_non_finite_and_negative_time_limits_are_rejected(base):
    for bad in (math.nan, math.inf, -1.0):
        tree = _mutate(base, "set", ("train", "time_limit_seconds"), bad)
        with pytest.raises(VlmjaxError, match="train.time_limit_seconds"):
            validate(ml_collections.ConfigDict(tree), 8)
