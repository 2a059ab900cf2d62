"""An OpenVINO export and load of ``tiny`` log nothing about guessing what the folder holds.

optimum-intel's ``from_pretrained`` guessed whether its argument was already an IR and, for
a local folder under HF_HUB_OFFLINE, failed the guess on every export and load ("Could not
infer whether the model was already converted ... Path.replace() takes 2 positional
arguments but 3 were given").  greenmon now calls the exporter and the loader directly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from greenmon.liblog import library_logs


@pytest.mark.slow
def test_openvino_exports_and_loads_without_the_guess_warning(
    tiny: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from greenmon.engines import get_engine

    events: list[tuple[str, str]] = []
    log = tmp_path / "engine.log"
    # A cache of its own, so the export runs here too, not only the load.
    engine = get_engine("openvino", cache_dir=str(tmp_path / "cache"))
    with library_logs(lambda level, message: events.append((level, message)), log):
        info = engine.load(tiny, "cpu", {})
        engine.close()
        # The logger the guess warning came from: proof that the capture would hear it.
        logging.getLogger("optimum.intel.openvino.modeling_base").warning("canary")
    assert info.export_cache_hit is False
    assert (Path(info.details["export_dir"]) / "openvino_model.xml").is_file()
    captured = "\n".join(message for _, message in events) + log.read_text()
    terminal = capfd.readouterr()
    for text in (captured, terminal.out, terminal.err):
        assert "Could not infer whether the model was already converted" not in text
        assert "Path.replace()" not in text
    assert ("warning", "optimum.intel.openvino.modeling_base: canary") in events
