import pytest
import torch
from conftest import tiny_config

from convscope import runtime, training
from convscope.config import RuntimeConfig
from convscope.evaluation import evaluate_model
from convscope.training import TrainingError, load_checkpoint, train_model


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_is_deterministic_and_writes_the_contract(tiny_index, tmp_path):
    config = tiny_config()
    first = train_model(config, tiny_index, tmp_path / "a/checkpoint.pt", threads=2)
    second = train_model(config, tiny_index, tmp_path / "b/checkpoint.pt", threads=2)
    assert states_equal(first["state_dict"], second["state_dict"])
    saved = load_checkpoint(tmp_path / "a/checkpoint.pt")
    assert {
        "state_dict",
        "arch",
        "num_classes",
        "model_kwargs",
        "classes",
        "input_size",
        "mean",
        "std",
        "epoch",
        "config",
        "history",
    } <= saved.keys()
    assert (
        saved["arch"] == "resnet18"
        and saved["num_classes"] == 10
        and saved["epoch"] == 2
        and len(saved["history"]) == 2
    )
    assert {"train_loss", "val_top1", "val_top5", "lr", "seconds"} <= saved["history"][0].keys()
    # auto's choice is recorded: bf16 on this CPU when it has native bf16, fp32 otherwise
    assert saved["runtime"]["precision"] == ("bf16" if runtime.cpu_has_native_bf16() else "fp32")
    assert not (tmp_path / "a/resume.pt").exists()
    m1 = evaluate_model(
        tmp_path / "a/checkpoint.pt", tiny_index, tmp_path / "m1.json", tmp_path / "p1.csv", tmp_path / "t1.json"
    )
    evaluate_model(
        tmp_path / "b/checkpoint.pt", tiny_index, tmp_path / "m2.json", tmp_path / "p2.csv", tmp_path / "t2.json"
    )
    assert (tmp_path / "m1.json").read_text() == (tmp_path / "m2.json").read_text()
    assert m1["splits"]["test"]["n"] == 40 and sum(map(sum, m1["splits"]["test"]["confusion_matrix"])) == 40


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_depthwise_models_train_deterministically_in_channels_last(tiny_index, tmp_path, precision):
    config = tiny_config(arch="mobilenet_v3_small", epochs=1)
    run = RuntimeConfig.defaults(precision=precision)
    first = train_model(config, tiny_index, tmp_path / "a/checkpoint.pt", run, threads=2)
    second = train_model(config, tiny_index, tmp_path / "b/checkpoint.pt", run, threads=2)
    assert first["runtime"] == {"device": "cpu", "precision": precision, "channels_last": True, "workers": 0}
    assert states_equal(first["state_dict"], second["state_dict"])
    assert all(v.is_contiguous() for v in first["state_dict"].values())


def test_a_different_seed_gives_different_weights(tiny_index, tmp_path):
    a = train_model(tiny_config(epochs=1), tiny_index, tmp_path / "a/checkpoint.pt")
    b = train_model(tiny_config(epochs=1, seed=1), tiny_index, tmp_path / "b/checkpoint.pt")
    assert not states_equal(a["state_dict"], b["state_dict"])


def test_resume_after_interruption_equals_an_uninterrupted_run(tiny_index, tmp_path, monkeypatch):
    config = tiny_config(epochs=3)
    reference = train_model(config, tiny_index, tmp_path / "ref/checkpoint.pt")

    real_save = training.save_atomic

    def crash_after_second_epoch(payload, path):
        real_save(payload, path)
        if path.name == "resume.pt" and payload["epoch"] == 2:
            raise KeyboardInterrupt  # stands in for SIGKILL: the process dies after epoch 2

    monkeypatch.setattr(training, "save_atomic", crash_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_model(config, tiny_index, tmp_path / "run/checkpoint.pt")
    assert not (tmp_path / "run/checkpoint.pt").exists() and (tmp_path / "run/resume.pt").exists()
    monkeypatch.setattr(training, "save_atomic", real_save)

    epochs_run = []
    real_tqdm = training.tqdm
    monkeypatch.setattr(
        training, "tqdm", lambda it, desc=None, **kw: (epochs_run.append(desc), real_tqdm(it, desc=desc, **kw))[1]
    )
    resumed = train_model(config, tiny_index, tmp_path / "run/checkpoint.pt")
    assert [d for d in epochs_run if d and "epoch" in d] == ["tiny epoch 3/3"]
    assert states_equal(resumed["state_dict"], reference["state_dict"])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]


def test_resume_state_of_another_config_is_ignored(tiny_index, tmp_path):
    train_model(tiny_config(epochs=1), tiny_index, tmp_path / "checkpoint.pt")
    stale = {"state_dict": {}, "epoch": 1, "config": {"other": True}, "classes": []}
    torch.save(stale, tmp_path / "resume.pt")
    checkpoint = train_model(tiny_config(epochs=1), tiny_index, tmp_path / "checkpoint.pt")
    assert len(checkpoint["history"]) == 1


def test_unreadable_resume_file_warns_and_trains_from_scratch(tiny_index, tmp_path, capsys):
    (tmp_path / "resume.pt").write_bytes(b"PK\x03\x04 half a zip")  # a save killed mid-write on another tool
    checkpoint = train_model(tiny_config(epochs=1), tiny_index, tmp_path / "checkpoint.pt")
    assert len(checkpoint["history"]) == 1 and not (tmp_path / "resume.pt").exists()
    assert f"warning: resume file '{tmp_path / 'resume.pt'}' cannot be read" in capsys.readouterr().err


def test_checkpoint_rebuilds_with_plain_torchvision(tiny_index, tmp_path):
    import torchvision

    saved = train_model(tiny_config(epochs=1), tiny_index, tmp_path / "checkpoint.pt")
    model = torchvision.models.get_model(saved["arch"], num_classes=saved["num_classes"], **saved["model_kwargs"])
    model.load_state_dict(saved["state_dict"])


def test_nan_loss_stops_with_a_clear_error(tiny_index, tmp_path):
    with pytest.raises(
        TrainingError, match=r"tiny: loss became (nan|inf) at epoch 1, step \d+; lower models\[\]\.lr \(now 1e\+30\)"
    ):
        train_model(tiny_config(lr=1e30, epochs=1), tiny_index, tmp_path / "checkpoint.pt")
    assert not (tmp_path / "checkpoint.pt").exists()


def test_frozen_backbone_trains_only_the_head(tiny_index, tmp_path):
    from convscope.models import build_model

    torch.manual_seed(0)
    initial = build_model(tiny_config(), 10).state_dict()
    trained = train_model(
        tiny_config(freeze="backbone", epochs=1, head_lr=0.1), tiny_index, tmp_path / "checkpoint.pt"
    )["state_dict"]
    for key, value in initial.items():
        if key.startswith("fc."):
            assert not torch.equal(value, trained[key])
        else:
            assert torch.equal(value, trained[key]), key
