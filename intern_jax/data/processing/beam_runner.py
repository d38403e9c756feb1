"""Apache Beam runner: the per-shard phases (clean, tokenise) as Beam pipelines.

Each work shard is one element; the elements run the very functions of the local runner
(``runner.clean_shard``, ``runner.tokenise_shard``), so both runners keep the same documents
and resume from the same done markers. The global dedup / quality pass runs in the driver
between the two pipelines (it holds only hashes and MinHash signatures). ``DIR`` must be a
filesystem every Beam worker sees. Tested with the DirectRunner; pass Beam options (e.g.
``--runner=DataflowRunner``) through ``beam_args``.
"""

from __future__ import annotations

from pathlib import Path


def _run(fn, shard_list, args, beam_args, label: str) -> list[str]:
    import apache_beam as beam  # noqa: PLC0415  (slow import: only for --runner beam)
    from apache_beam.options.pipeline_options import PipelineOptions  # noqa: PLC0415

    options = PipelineOptions(list(beam_args) or ["--runner=DirectRunner", "--direct_num_workers=1"])
    with beam.Pipeline(options=options) as p:
        _ = (
            p
            | f"{label}_shards" >> beam.Create(list(shard_list))
            | f"{label}_reshuffle" >> beam.Reshuffle()
            | label >> beam.Map(lambda shard: fn(shard, *args))
        )
    return [s.id for s in shard_list]


def run_clean(shard_list, work: Path, cfg, beam_args=()) -> None:
    from intern_jax.data.processing.runner import clean_shard  # noqa: PLC0415

    _run(clean_shard, shard_list, (Path(work), cfg), beam_args, "clean")


def run_tokenise(shard_list, work: Path, cfg, tokenizer_path: str, beam_args=()) -> None:
    from intern_jax.data.processing.runner import tokenise_shard  # noqa: PLC0415

    _run(tokenise_shard, shard_list, (Path(work), cfg, tokenizer_path), beam_args, "tokenise")
