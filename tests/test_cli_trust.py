"""`umop` as a new user meets it: unreadable images, a second train into the same folder, eval / predict from
the checkpoint alone with no network, and one-line errors (exit code 2, no traceback) for user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from umop.cli import main
from umop.data import make_tiny_synthetic_dataset

TINY = ["model.backbone=resnet18", "model.options.fpn_channels=32", "model.options.score_thresh=0.0",
        "data.synthetic.enabled=false", "data.min_size=64", "data.max_size=64", "batch_size=4",
        "solver.epochs=1", "solver.warmup_iters=1", "solver.max_iters_per_epoch=1", "log.every=1",
        "log.progress_bar=false", "log.tensorboard=false", "seed=0", "device=cpu", "workers=0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Data overrides of a tiny synthetic set and the checkpoint of a one-iteration run on it."""
    root = tmp_path_factory.mktemp("trust")
    train = make_tiny_synthetic_dataset(root / "train", num_images=4, seed=0)
    val = make_tiny_synthetic_dataset(root / "val", num_images=4, seed=1)
    data = [f"data.train_ann={train}", f"data.train_images={train.parent}",
            f"data.val_ann={val}", f"data.val_images={val.parent}"]
    run_dir = root / "run"
    assert main(["train", "demo_synthetic", "--out", str(run_dir), "--set", *TINY, *data]) == 0
    return {"data": data, "val": val, "run_dir": run_dir, "checkpoint": run_dir / "checkpoints" / "last.pt"}


def one_line_error(captured) -> str:
    """The error line of a failed command: exactly one, and no traceback anywhere."""
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    lines = [line for line in captured.err.splitlines() if ": error: " in line]
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.fixture
def offline(monkeypatch):
    """No network: any weight download fails the way torch.hub fails offline."""
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)


def corrupt(path: Path) -> None:
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not an image any more")


def test_eval_from_the_checkpoint_alone_offline_and_unreadable_images_counted_once(tmp_path, tiny, offline, capsys):
    # A checkpoint whose stored config asks for ImageNet weights (as every COCO config does) and a weights file
    # that is not there: eval must not need either, since the checkpoint replaces every weight.
    state = torch.load(tiny["checkpoint"], weights_only=False)
    state["config"]["model"]["pretrained_backbone"] = True
    state["config"]["model"]["options"]["backbone_weights"] = str(tmp_path / "absent.pth")
    checkpoint = tmp_path / "coco_like.pt"
    torch.save(state, checkpoint)

    out = tmp_path / "plain.json"
    assert main(["eval", str(checkpoint), "--out", str(out)]) == 0  # no config argument, no network
    plain = json.loads(out.read_text())
    assert plain["num_images"] == 4 and plain["num_failed_images"] == 0
    assert plain["config"] == "stored in the checkpoint"

    # 2 of the 4 validation images become unreadable: skipped, reported, counted; the others once each.
    images = tmp_path / "val"
    images.mkdir()
    coco = json.loads(tiny["val"].read_text())
    source = Path(tiny["data"][3].split("=", 1)[1])
    for image in coco["images"]:
        (images / image["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        (images / image["file_name"]).write_bytes((source / image["file_name"]).read_bytes())
    bad = coco["images"][1::2]
    for image in bad:
        corrupt(images / image["file_name"])
    capsys.readouterr()
    out, results = tmp_path / "eval.json", tmp_path / "results.json"
    assert main(["eval", str(checkpoint), "--set", f"data.val_images={images}", "--out", str(out),
                 "--results", str(results)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["num_images"] == 2 and metrics["num_failed_images"] == 2
    assert sorted(f["image_id"] for f in metrics["failed_images"]) == sorted(i["id"] for i in bad)
    good_ids = {i["id"] for i in coco["images"]} - {i["id"] for i in bad}
    per_image = Counter(r["image_id"] for r in json.loads(results.read_text()))
    assert set(per_image) <= good_ids and max(per_image.values()) <= 100  # at most one image's detections
    err = capsys.readouterr().err
    assert all(image["file_name"] in err for image in bad)

    # backward compatible: CONFIG CHECKPOINT (and the reverse order) still work
    assert main(["eval", "demo_synthetic", str(tiny["checkpoint"]), "--set", *TINY, *tiny["data"],
                 "--out", str(tmp_path / "a.json")]) == 0
    assert main(["eval", str(tiny["checkpoint"]), "demo_synthetic", "--set", *TINY, *tiny["data"],
                 "--out", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["AP"] == pytest.approx(plain["AP"])


def test_predict_from_the_checkpoint_skips_unreadable_inputs(tmp_path, tiny, offline, capsys):
    good = sorted((tiny["val"].parent / "images").glob("*.png"))[0]
    broken = tmp_path / "broken.png"
    corrupt(broken)
    out = tmp_path / "pred"
    assert main(["predict", str(tiny["checkpoint"]), str(good), str(broken), str(tiny["val"]), "--out", str(out),
                 "--score-thresh", "0.0"]) == 0
    assert [p.name for p in out.glob("*.png")] == [good.name]
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and tiny["val"].name in captured.err and "Traceback" not in captured.err
    listed = json.loads((out / "images.json").read_text())
    assert [Path(s["file"]).name for s in listed["skipped"]] == ["broken.png", tiny["val"].name]

    assert main(["predict", str(tiny["checkpoint"]), str(broken), "--out", str(out)]) == 2  # nothing readable
    assert "none of the 1 inputs could be read" in one_line_error(capsys.readouterr())


def test_second_train_into_the_same_folder_is_refused_then_overwrite_or_resume(tmp_path, tiny, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "demo_synthetic", "--out", str(run_dir), "--set", *TINY, *tiny["data"], "data.val_ann="]
    assert main(args + ["--resume", "auto"]) == 0  # start-or-continue on an empty folder starts
    log = (run_dir / "log.jsonl").read_text()
    capsys.readouterr()
    assert main(args) == 2
    message = one_line_error(capsys.readouterr())
    assert "--resume auto" in message and "--overwrite" in message and str(run_dir) in message
    assert (run_dir / "log.jsonl").read_text() == log
    (run_dir / "checkpoints" / "epoch_9.pt").write_bytes(b"stale")
    assert main(args + ["--overwrite"]) == 0
    assert not (run_dir / "checkpoints" / "epoch_9.pt").exists()
    assert [json.loads(line)["iter"] for line in (run_dir / "log.jsonl").read_text().splitlines()] == [1]
    assert main(args + ["solver.epochs=2", "--resume", "auto"]) == 0  # start-or-continue continues
    assert [json.loads(line)["iter"] for line in (run_dir / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_user_mistakes_are_one_line_with_exit_code_2(tmp_path, tiny, offline, capsys):
    def train(*extra: str) -> int:
        return main(["train", "demo_synthetic", "--out", str(tmp_path / "x"), "--set", *TINY, *tiny["data"], *extra])

    try:
        import timm  # noqa: F401
    except ImportError:
        assert train("model.backbone=swin_t") == 2
        message = one_line_error(capsys.readouterr())
        assert "swin_t" in message and "timm" in message

    assert train("model.pretrained_backbone=true") == 2  # weights unavailable offline
    message = one_line_error(capsys.readouterr())
    assert "--set model.options.backbone_weights=" in message and "resnet18" in message

    from torchvision.models import resnet50

    weights = tmp_path / "resnet50.pth"  # weights of another architecture, for a resnet18 backbone
    torch.save({k: v for k, v in resnet50().state_dict().items() if k.startswith(("conv1", "bn1", "layer1.0"))},
               weights)
    assert train("model.pretrained_backbone=true", f"model.options.backbone_weights={weights}") == 2
    message = one_line_error(capsys.readouterr())
    assert "do not fit resnet18" in message and "other shapes" in message

    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in one_line_error(capsys.readouterr())
    assert main(["eval", "atss_pfl"]) == 2
    assert "is a config, not a checkpoint" in one_line_error(capsys.readouterr())


def test_more_user_mistakes_name_the_file_key_or_argument(tmp_path, tiny, capsys):
    """The cases a probe of the CLI found with unclear messages (or, for the first, none at all)."""
    synthetic = ["data.synthetic.num_train=2", "data.synthetic.num_val=1", f"data.synthetic.out_dir={tmp_path / 'syn'}",
                 *[o for o in TINY if not o.startswith("data.synthetic")]]
    assert main(["train", "demo_synthetic", "--out", str(tmp_path / "t"), "--set", *synthetic,
                 f"data.train_ann={tmp_path / 'mine.json'}"]) == 2  # was: trained on the synthetic set, exit 0
    message = one_line_error(capsys.readouterr())
    assert "data.train_ann=" in message and "data.synthetic.enabled=false" in message
    assert main(["config", "show", "demo_synthetic", "--set", "solver.epochs=abc"]) == 2
    message = one_line_error(capsys.readouterr())
    assert message.startswith("umop config: error: --set (over ") and "solver.epochs" in message
    assert main(["eval", str(tmp_path)]) == 2
    assert "is a directory, expected a checkpoint file" in one_line_error(capsys.readouterr())
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)) * 8)
    assert main(["eval", str(junk)]) == 2
    message = one_line_error(capsys.readouterr())
    assert "junk.pt" in message and "not a PyTorch checkpoint" in message and message.isprintable()
    assert main(["data", "check", str(tmp_path)]) == 2
    assert "is a directory, expected a COCO json file" in one_line_error(capsys.readouterr())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}, {"id": 2}], "annotations": [],
                               "categories": []}))
    assert main(["data", "split", str(bad), "--val", "1"]) == 2
    assert f"{bad}: images[1] has no 'file_name' or 'id'" in one_line_error(capsys.readouterr())
    (tmp_path / "notvoc").mkdir()
    (tmp_path / "notvoc" / "readme.txt").write_text("x")
    assert main(["data", "convert", "--from", "voc", str(tmp_path / "notvoc"), "--out", str(tmp_path / "c.json")]) == 2
    assert "notvoc is not a VOC folder" in one_line_error(capsys.readouterr())
    assert main(["predict", str(tiny["checkpoint"]), str(tmp_path / "junk.pt"), "--out", str(tmp_path / "p"),
                 "--score-thresh", "lrp", "--eval-json", str(tmp_path / "none.json")]) == 2
    assert "--eval-json" in (message := one_line_error(capsys.readouterr())) and "none.json: file not found" in message


def test_help_imports_no_torch():
    code = "import sys; from umop.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src"), "PATH": ""})
    assert done.stdout.strip() == "False"


def test_config_show_prints_every_key_with_its_meaning(tiny, capsys):
    from umop.engine.config import config_help, config_to_dict, load_config

    meanings = config_help()
    assert all(meanings.values()), [key for key, meaning in meanings.items() if not meaning]
    assert main(["config", "show", "atss_pfl", "--set", "solver.lr=0.02"]) == 0
    text = capsys.readouterr().out
    assert yaml.safe_load(text) == config_to_dict(load_config("atss_pfl", ["solver.lr=0.02"]))
    for key, meaning in meanings.items():
        assert f"{key.rpartition('.')[2]}:" in text and f"# {meaning}" in text, key
    assert main(["config", "show", str(tiny["checkpoint"])]) == 0  # the config stored in a checkpoint
    assert yaml.safe_load(capsys.readouterr().out)["model"]["backbone"] == "resnet18"


def test_an_interrupted_train_says_what_was_saved(tmp_path, tiny, monkeypatch, capsys):
    from umop.engine.trainer import Trainer, TrainingInterrupted

    def interrupted(self):
        raise TrainingInterrupted("SIGTERM", None, "SIGTERM: nothing was saved (no checkpoint yet); a new run "
                                                   "starts from scratch")

    monkeypatch.setattr(Trainer, "train", interrupted)
    assert main(["train", "demo_synthetic", "--out", str(tmp_path / "r"), "--set", *TINY, *tiny["data"]]) == 130
    err = capsys.readouterr().err
    assert "umop train: interrupted by SIGTERM: nothing was saved" in err and "--resume auto" not in err
