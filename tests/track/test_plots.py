"""tierlab report and the end-of-run dashboard: real PNGs from real runs."""

import numpy as np
import pytest

import tierlab
from helpers import assert_user_error, fast_config, run_cli
from tierlab.track.plots import DPI, FIGSIZE, summary_table

WIDTH, HEIGHT = int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("plots")
    fp16 = tierlab.train(config=fast_config(out, name="fp16", precision="fp16", max_steps=20, log_every=2,
                                            eval_every=10, loss_scale_init=2.0**20))
    plain = tierlab.train(config=fast_config(out, name="fp32-noeval", max_steps=20, log_every=2, eval_every=0,
                                             no_plots=True))
    return out, fp16, plain


def _image(path):
    from matplotlib.image import imread

    pixels = imread(str(path))
    assert pixels.shape[:2] == (HEIGHT, WIDTH)
    return pixels


def _is_drawn(pixels) -> bool:
    """Not blank: many distinct colours, and a good share of non-white pixels."""
    rgb = pixels[..., :3]
    non_white = np.mean(np.any(rgb < 0.95, axis=-1))
    colours = len(np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    return non_white > 0.05 and colours > 20


def test_every_run_writes_its_dashboard_unless_told_not_to(runs):
    _, fp16, plain = runs
    assert _is_drawn(_image(fp16.dir / "dashboard.png"))
    assert not (plain.dir / "dashboard.png").exists()


def test_report_one_run_without_eval_or_scaler(runs):
    out, _, plain = runs
    result = run_cli("report", ".", cwd=plain.dir)  # from inside the run: still named by its folder
    assert result.returncode == 0, result.stderr
    assert _is_drawn(_image(plain.dir / "dashboard.png"))
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["run", "status", "steps"]
    assert lines[1].startswith("fp32-noeval") and "completed" in lines[1] and " 20 " in lines[1]


def test_report_overlays_two_runs(runs, tmp_path):
    out, fp16, plain = runs
    target = tmp_path / "both.png"
    result = run_cli("report", fp16.dir, plain.dir, "--out", target, cwd=out)
    assert result.returncode == 0, result.stderr
    assert _is_drawn(_image(target))
    assert len([l for l in result.stdout.splitlines() if l.startswith(("fp16", "fp32-noeval"))]) == 2
    assert "not comparable" not in result.stdout  # same data, same tokenizer: one scale
    fig = tierlab.Run.load(fp16.dir).plot()
    axes = fig.get_axes()
    assert len(axes) == 6 and axes[3].get_yscale() == "log"  # the loss scale on a log axis
    labels = [line.get_label() for line in axes[3].get_lines()]
    assert any("skipped steps" in label for label in labels)


def test_report_of_a_non_run_is_a_user_error(tmp_path):
    assert_user_error(run_cli("report", tmp_path, cwd=tmp_path), "not a tierlab run directory")


def test_report_warns_when_losses_are_on_other_scales(runs, tmp_path):
    out, fp16, _ = runs
    corpus = tmp_path / "other.txt"
    corpus.write_text("the cat sat on the mat. " * 400)
    other = tierlab.train(config=fast_config(tmp_path, name="bpe", data=str(corpus), tokenizer="bpe:300",
                                             max_steps=4, eval_every=0, no_plots=True))
    text = summary_table([fp16.dir, other.dir])
    assert "note: the losses are not comparable" in text
    assert "fp16: byte on demo" in text and "bpe: bpe:300 on other.txt" in text


def test_report_out_a_folder_writes_dashboard_png_into_it(runs, tmp_path):
    out, _, plain = runs
    new = tmp_path / "new" / "folder"
    result = run_cli("report", plain.dir, "--out", f"{new}/", cwd=out)  # ends with /: created
    assert result.returncode == 0, result.stderr
    assert _is_drawn(_image(new / "dashboard.png"))
    assert result.stdout.splitlines()[-1] == f"dashboard: {new / 'dashboard.png'}"  # the file written
    assert not (tmp_path / "new" / "folder.png").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    result = run_cli("report", plain.dir, "--out", existing, cwd=out)  # an existing folder, no slash
    assert result.returncode == 0, result.stderr
    assert _is_drawn(_image(existing / "dashboard.png"))
    assert result.stdout.splitlines()[-1] == f"dashboard: {existing / 'dashboard.png'}"
    # A name without an extension: matplotlib writes NAME.png, and that is the path printed.
    result = run_cli("report", plain.dir, "--out", tmp_path / "summary", cwd=out)
    assert result.returncode == 0, result.stderr
    assert _is_drawn(_image(tmp_path / "summary.png"))
    assert result.stdout.splitlines()[-1] == f"dashboard: {tmp_path / 'summary.png'}"
    assert_user_error(run_cli("report", plain.dir, "--out", tmp_path / "nope" / "d.png", cwd=out),
                      "its folder does not exist", "end the path with /")
    (tmp_path / "file").write_text("")
    assert_user_error(run_cli("report", plain.dir, "--out", f"{tmp_path / 'file'}/", cwd=out),
                      "Cannot create the folder")
    assert_user_error(run_cli("report", plain.dir, "--out", tmp_path / "d.jpgx", cwd=out),
                      "matplotlib cannot write '.jpgx' images", ".png")  # not a ValueError traceback
