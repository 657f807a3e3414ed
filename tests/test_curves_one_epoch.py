"""curves.png after one epoch: every series it names is drawn, the per-group train KL
(dashed) too, which as a bare line was a single point with nothing to draw."""
from fastvae import plots


def test_one_epoch_draws_every_series_of_the_group_panel(tmp_path, monkeypatch):
    figures = []
    save = plots.save_figure

    def keep(fig, *a, **k):
        figures.append(fig)
        return save(fig, *a, **k)
    monkeypatch.setattr(plots, "save_figure", keep)
    m = {"elbo": -1.0, "kl": 1.0, "rec": 0.0, "kl_groups": [0.75, 0.25]}
    plots.save_curves([{"epoch": 1, "train": m, "test": m}], tmp_path / "curves.png")
    lines = figures[0].axes[3].get_lines()
    assert len(lines) == 4
    assert all(line.get_marker() not in (None, "", "None", " ") for line in lines)
