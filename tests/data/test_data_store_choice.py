"""Which data path a fit takes (``pipeline.choose_store``), and that both give the same fit."""
import numpy as np
import pytest

from segmentation.config import parse_config
from segmentation.errors import ConfigError
from segmentation.pipeline import choose_store, prepare
from segmentation.solver.prox_newton import fit


def _cfg(tmp_path, **data):
    raw = {"data": {"exposures": str(tmp_path / "x"), "covariates": ["x1"], **data},
           "segments": {"s": ["a", "b"]}, "output": {"model_dir": str(tmp_path / "m")}}
    return parse_config(raw)


def test_local_master_takes_block_files(spark, tmp_path):
    store, why = choose_store(spark, _cfg(tmp_path))
    assert store == "files" and "local master" in why


def test_explicit_store_wins(spark, tmp_path):
    assert choose_store(spark, _cfg(tmp_path, store="spark"))[0] == "spark"
    assert choose_store(spark, _cfg(tmp_path, store="files", block_dir="/nfs/x"))[0] == "files"


def test_bad_store_and_storage_level_named(tmp_path):
    with pytest.raises(ConfigError, match="data.store"):
        _cfg(tmp_path, store="hdfs")
    with pytest.raises(ConfigError, match="data.cache_storage_level"):
        _cfg(tmp_path, cache_storage_level="MEMORY")


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    from segmentation.data.simulate import simulate_campaign

    out = tmp_path_factory.mktemp("store-campaign")
    simulate_campaign(str(out), n_users=3000, seed=2, overwrite=True)
    return out


def test_both_data_paths_prepare_and_fit_the_same(spark, campaign, tmp_path):
    from segmentation.workflow import demo_config

    fits, prepared = {}, []
    try:
        for store in ("files", "spark"):
            raw = demo_config(str(campaign), str(tmp_path / store))
            raw["data"]["store"] = store
            cfg = parse_config(raw)
            p = prepare(spark, cfg, n_folds=3)
            prepared.append(p)
            assert p.store == store
            fits[store] = (p, fit(p.oracle, p.structure, 0.01, 0.1, tol=1e-9))
        (pf, a), (ps, b) = fits["files"], fits["spark"]
        np.testing.assert_array_equal(pf.manifest.counts, ps.manifest.counts)
        np.testing.assert_array_equal(pf.manifest.positives, ps.manifest.positives)
        assert a.n_passes == b.n_passes
        np.testing.assert_array_equal(a.fused, b.fused)
        assert b.objective == pytest.approx(a.objective, rel=1e-10)
        np.testing.assert_allclose(b.beta, a.beta, rtol=1e-8, atol=1e-10)
    finally:
        for p in prepared:
            p.release()
    assert prepared[1].manifest.released
