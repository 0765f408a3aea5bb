from pathlib import Path

import pytest
import yaml

from raypfl.config import Config, flatten, load_config, parse_override, to_yaml
from raypfl.errors import UserError


def test_defaults_resolve_and_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = load_config()
    assert cfg.data.dataset == "digits"
    assert cfg.clients.num_clients == 10
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


def test_yaml_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"clients": {"num_clients": 5}, "data": {"partition": {"kind": "shards"}}}))
    cfg = load_config(path, ["clients.num_clients=7", "data.partition.alpha=0.3"])
    assert cfg.clients.num_clients == 7
    assert cfg.data.partition.kind == "shards"
    assert cfg.data.partition.alpha == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("a.b=3", "a.b", 3),
        ("a.b=0.5", "a.b", 0.5),
        ("a.b=true", "a.b", True),
        ("a.b=[1, 2]", "a.b", [1, 2]),
        ("a.b=null", "a.b", None),
        ("a.b=hello", "a.b", "hello"),
        ("a.b=x=y", "a.b", "x=y"),
        ("a.b=1e9", "a.b", 1e9),  # YAML 1.1 would read these two as text
        ("a.b=-2.5E-3", "a.b", -0.0025),
        ("a.b=1e9x", "a.b", "1e9x"),
    ],
)
def test_override_values_are_coerced_like_yaml(text: str, key: str, value: object) -> None:
    assert parse_override(text) == (key, value)


def test_numbers_are_accepted_as_names() -> None:
    assert load_config(overrides=["experiment.name=2024"]).experiment.name == "2024"


def test_explicit_classes() -> None:
    classes = ("[{name: strong, density: 1.0, count: 1, download_mbps: 20, upload_mbps: 5},"
               " {name: weak, density: 0.1, count: 3, download_mbps: 2, upload_mbps: 0.5,"
               " resources: {GPU: 0.1, CPU: 0}}]")
    cfg = load_config(overrides=["clients.num_clients=4", f"clients.heterogeneity={classes}"])
    assert isinstance(cfg.clients.heterogeneity, list)
    assert [c.count for c in cfg.clients.heterogeneity] == [1, 3]
    assert cfg.clients.heterogeneity[1].resources == {"GPU": 0.1, "CPU": 0.0}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.foo=1", "unknown config key 'data.foo'"),
        ("bogus.x=1", "unknown config key 'bogus'"),
        ("data.partition.alpha=0", "'data.partition.alpha'"),
        ("data.partition.alpha=-2", "greater than 0"),
        ("budget.virtual_time_s=0", "'budget.virtual_time_s'"),
        ("budget.max_rounds=0", "'budget.max_rounds'"),
        ("clients.num_clients=0", "'clients.num_clients'"),
        ("clients.num_clients=abc", "valid integer"),
        ("experiment.seed=true", "'experiment.seed'"),
        ("model.name=bert", "'cnn', 'vgg11', 'resnet18' or 'mlp'"),
        ("data.dataset=imagenet", "'data.dataset'"),
        ("algorithm.name=fedsgd", "'algorithm.name'"),
        ("clients.heterogeneity=extreme", "'high', 'medium' or 'low'"),
        ("runtime.mode=fast", "'virtual' or 'realtime'"),
        ("budget.target_accuracies=[0.5, 2]", "'budget.target_accuracies.1'"),
        ("data.test_fraction=1", "'data.test_fraction'"),
        ("training.lr=0", "'training.lr'"),
        ("experiment.name=a/b", "'experiment.name'"),
        ("data=3", "'data'"),
        ("algorithm.variant=aux", "algorithm.variant 'aux' applies to heterofl, fedrolex, fjord, not to 'fedgmr'"),
        ("algorithm.variant=fast", "'base', 'aux', 'aux_gmr' or 'masks'"),
        ("algorithm.width.kind=random", "'algorithm.width.kind'"),
        ("algorithm.width.kind=static", "exclusive"),
        ("clients.placement={d7: pool_a}", "clients.placement names class 'd7'"),
    ],
)
def test_bad_values_name_key_and_allowed(override: str, expected: str) -> None:
    with pytest.raises(UserError, match=None) as info:
        load_config(overrides=[override])
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_class_density_out_of_range_points_at_the_class() -> None:
    bad = "[{name: a, density: 1.5, count: 10, download_mbps: 1, upload_mbps: 1}]"
    with pytest.raises(UserError, match=r"clients\.heterogeneity\.0\.density"):
        load_config(overrides=[f"clients.heterogeneity={bad}"])


def test_class_counts_must_match_num_clients() -> None:
    bad = "[{name: a, density: 0.5, count: 3, download_mbps: 1, upload_mbps: 1}]"
    with pytest.raises(UserError, match="hold 3 clients but clients.num_clients is 10"):
        load_config(overrides=[f"clients.heterogeneity={bad}"])


@pytest.mark.parametrize(("content", "expected"), [
    ("a: [", "not valid YAML"),
    ("- 1\n- 2", "must hold a mapping"),
])
def test_bad_yaml_files(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(UserError, match=expected):
        load_config(path)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("experiment: !!python/object/apply:os.system ['echo pwned']")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(path)


def test_override_into_a_value_is_refused() -> None:
    with pytest.raises(UserError, match="is a value, not a section"):
        load_config(overrides=["data.dataset=digits", "data.dataset.x=1"])


def test_flatten_gives_dotted_params() -> None:
    flat = flatten(Config())
    assert flat["data.partition.kind"] == "iid"
    assert flat["budget.max_rounds"] == "null"


def test_the_configuration_reference_in_docs_is_current() -> None:
    from raypfl.config_reference import reference

    page = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert page.read_text() == reference(), "regenerate it: raypfl config reference > docs/configuration.md"
    assert "| `algorithm.rule` | *preset* |" in page.read_text()
