"""medadapt: adapt medical vision-language models with few labels.

Layers (data flows downward only): cli -> api -> recipes / engine -> methods -> backbones / data
-> config / metrics / paths.

The Python API (:mod:`medadapt.api`, docs/api.md) is re-exported here lazily, so ``import
medadapt`` stays light (no torch until a function is used)::

    import medadapt
    run = medadapt.fit(backbone="plip", dataset="kather2016", method="coop", shots=16,
                       out="runs/coop")
    run.predict(["tile.png"]).probs
"""
__version__ = "0.1.0"

_API = ("fit", "load_run", "load_backbone", "load_dataset", "push", "Run", "Prediction")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from medadapt import api
        return getattr(api, name)
    raise AttributeError(f"module 'medadapt' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
