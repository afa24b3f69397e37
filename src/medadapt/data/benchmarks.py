"""The names this module used to hold, for code that imports them from here.

The parsers now live one family per module in :mod:`medadapt.data.sets` (``kather``,
``medmnist``, ``pcam``, ...; the BiomedCoOp benchmark in ``biomedcoop``), downloads in
:mod:`medadapt.data.download`, the registry in :mod:`medadapt.data.catalog`.
"""
from medadapt.data.download import *  # noqa: F401,F403
from medadapt.data.download import _fetch, _safe_extract, _verify  # noqa: F401
from medadapt.data.sets import *  # noqa: F401,F403
from medadapt.data.sets._common import *  # noqa: F401,F403
from medadapt.data.sets.bccd import *  # noqa: F401,F403
from medadapt.data.sets.derm7pt import *  # noqa: F401,F403
from medadapt.data.sets.kather import *  # noqa: F401,F403
from medadapt.data.sets.kimia import *  # noqa: F401,F403
from medadapt.data.sets.lc25000 import *  # noqa: F401,F403
from medadapt.data.sets.medmnist import *  # noqa: F401,F403
from medadapt.data.sets.medmnist import _npz_arrays  # noqa: F401
from medadapt.data.sets.pannuke import *  # noqa: F401,F403
from medadapt.data.sets.pcam import *  # noqa: F401,F403
