"""Config: validation, clear errors naming file, field and line; check-config exits 2 without a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from inspector.config import ConfigError, ReplaySource, load_config

from .conftest import REPO, make_model, run_cli

GOOD = """
[[cameras]]
id = "cam1"
model = "models/m"
source = { type = "synthetic", fps = 5 }

[[cameras]]
id = "cam2"
model = "models/m"
roi = [0, 0, 64, 64]
[cameras.source]
type = "replay"
path = "images"
"""


def test_valid_config_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    cfg = load_config(path)
    assert cfg.cameras[0].model == (tmp_path / "models/m").resolve()
    src = cfg.cameras[1].source
    assert isinstance(src, ReplaySource) and src.path == (tmp_path / "images").resolve()
    assert cfg.cameras[1].roi == (0, 0, 64, 64)
    assert cfg.worker.device == "auto" and cfg.scoring.not_inspected_verdict == "reject"


def test_unknown_key_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD + "\n[worker]\nmax_batchh = 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "worker.max_batchh" in msg and "unknown key" in msg
    assert f"line {GOOD.count(chr(10)) + 3}" in msg


def test_wrong_type_in_second_camera_names_index_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD.replace('path = "images"', 'path = "images"\nfps = "fast"'))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "cameras[1].source.fps" in msg
    assert "line 14" in msg


def test_unknown_source_type_and_bad_device(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD.replace('type = "replay"', 'type = "gige"') + '\n[worker]\ndevice = "gpu"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "cameras[1].source" in str(err.value) and "worker.device" in str(err.value)


def test_duplicate_camera_ids_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD.replace('id = "cam2"', 'id = "cam1"'))
    with pytest.raises(ConfigError, match="repeated: cam1"):
        load_config(path)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[cameras]\nid=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_config_is_immutable(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    cfg = load_config(path)
    with pytest.raises(ValidationError):
        cfg.worker.max_batch = 3  # type: ignore[misc]


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    """check-config: 0 and a summary when valid; 2 and one message, no traceback, when not."""
    make_model(tmp_path / "models" / "m")
    (tmp_path / "images").mkdir()
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    ok = run_cli("check-config", str(path))
    assert ok.returncode == 0, ok.stderr
    assert "OK (2 camera(s)" in ok.stdout

    path.write_text(GOOD + "\n[publisher]\nendpoint = 5555\n")
    bad = run_cli("check-config", str(path))
    assert bad.returncode == 2
    assert "publisher.endpoint" in bad.stderr and "Traceback" not in bad.stderr

    missing = run_cli("check-config", str(tmp_path / "missing.toml"))
    assert missing.returncode == 2 and "missing.toml" in missing.stderr and "Traceback" not in missing.stderr


def test_shipped_configs_validate() -> None:
    """Every config under config/ validates."""
    paths = sorted((REPO / "config").glob("*.toml"))
    assert paths, "config/ holds no example configs"
    for path in paths:
        load_config(path)


def test_readme_config_reference_is_current() -> None:
    """README's config reference is generated from the field descriptions; regenerate it with
    `python -m inspector.config_reference --write README.md`."""
    from inspector.config_reference import splice

    readme = (REPO / "README.md").read_text()
    assert splice(readme) == readme


def test_every_config_field_has_a_description() -> None:
    from inspector.config_reference import SECTIONS

    for _, model in SECTIONS:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_scoring_reduction_accepts_every_reduction_a_model_can_record() -> None:
    """`scoring.reduction` may name any of `inspector.scoring`'s reductions (patchcore records
    `map_topk_or_mean`), and nothing else besides `model`."""
    from typing import get_args

    from inspector.config import ScoringConfig
    from inspector.scoring import REDUCTIONS

    allowed = set(get_args(ScoringConfig.model_fields["reduction"].annotation))
    assert allowed == {"model", *REDUCTIONS}
    assert ScoringConfig(reduction="map_topk_or_mean").reduction == "map_topk_or_mean"
    with pytest.raises(ValidationError):
        ScoringConfig(reduction="map_mean")
