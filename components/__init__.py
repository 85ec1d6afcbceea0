"""Plain-Python stages of the amalia-vl pipeline.

Nothing here imports Prefect: the CLI (`amalia_vl.cli`), DVC (`dvc.yaml`) and the Prefect
flows (`flows/`) all call the same stage functions registered in `components.stages`.
"""
