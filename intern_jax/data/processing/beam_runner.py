"""Apache Beam runner: the per-shard phases (clean, tokenise) as Beam pipelines.

Each work shard is one element; ``run_shards`` maps the very shard function the local runner
passes it (``runner.clean_shard``, ``runner.tokenise_shard``) over them, so both runners keep the
same documents and resume from the same done markers; this module knows nothing of the stages.
The global dedup / quality pass runs in the driver between the two pipelines (it holds only
hashes and MinHash signatures). ``DIR`` must be a filesystem every Beam worker sees. Tested with
the DirectRunner; pass Beam options (e.g. ``--runner=DataflowRunner``) through ``beam_args``.
"""

from __future__ import annotations


def run_shards(fn, shard_list, args, label: str, beam_args=()) -> list[str]:
    """``fn(shard, *args)`` for every shard, as one Beam pipeline named ``label``; the shard ids."""
    import apache_beam as beam  # noqa: PLC0415  (optional, slow import: only for --runner beam)
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
