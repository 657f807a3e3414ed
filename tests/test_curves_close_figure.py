"""save_figure closes its figure: one left open per picture leaks, and warns past 20
in a long-lived process."""
from fastvae import plots


def test_save_curves_leaves_no_open_figure(tmp_path):
    plt = plots.pyplot()
    plt.close("all")
    m = {"elbo": -1.0, "kl": 1.0, "rec": 0.0}
    plots.save_curves([{"epoch": 1, "train": m, "test": m}], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert plt.get_fignums() == []
