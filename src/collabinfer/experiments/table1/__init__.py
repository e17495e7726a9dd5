"""Table 1, measured: its types (:mod:`.schema`), rows (:mod:`.rows`), the real-socket
row (:mod:`.real`), the candidates the collabinfer row may deploy (:mod:`.candidates`),
the run (:mod:`.run`) and the demo that trains and runs it all (:mod:`.demo`)."""

from collabinfer.experiments.table1.demo import prepare_models, run_demo
from collabinfer.experiments.table1.run import Table1Models, run_table1
from collabinfer.experiments.table1.schema import PARADIGMS, Row, Table1Config, Table1Result

__all__ = [
    "PARADIGMS",
    "Row",
    "Table1Config",
    "Table1Models",
    "Table1Result",
    "prepare_models",
    "run_demo",
    "run_table1",
]
