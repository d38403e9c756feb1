"""A TFDS dataset over processed shards, written as array_record and read with ``tfds.data_source``.

TensorFlow is not needed: TFDS 4.9 builds a ``GeneratorBasedBuilder`` with
``file_format="array_record"`` and serialises examples with its own protobuf code, and
``tfds.data_source`` reads them back as numpy. Each example is ``{"tokens": int32[None],
"source": str}``; each source of the manifest is a split. The grain pipeline does not need
this copy (it reads the shards directly); it is for TFDS-based tooling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from intern_jax.data.processing import shards

DATASET_NAME = "intern_jax_corpus"


def _builder_class():
    import tensorflow_datasets as tfds  # noqa: PLC0415  (slow import)

    class InternJaxCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Token documents of a processed corpus; one split per source."""

        name = DATASET_NAME
        VERSION = tfds.core.Version("1.0.0")
        # The builder ships no checksums or metadata files beside its code; without this TFDS
        # 4.9.10 looks for them through the `importlib_resources` backport, which it does not require.
        code_path = None

        def __init__(self, *, corpus_dir, **kwargs):
            self._corpus_dir = Path(corpus_dir)
            self._manifest = shards.load_manifest(corpus_dir)
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"Token documents of {self._corpus_dir} (vocab {self._manifest['vocab_size']}).",
                features=tfds.features.FeaturesDict({
                    "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                    "source": tfds.features.Text(),
                }),
                metadata=tfds.core.MetadataDict(tokenizer=self._manifest["tokenizer"]),
            )

        def _split_generators(self, dl_manager):
            return {source: self._generate_examples(source) for source in self._manifest["sources"]}

        def _generate_examples(self, source):
            for name in self._manifest["sources"][source]["files"]:
                for i, tokens in enumerate(shards.read_records(self._corpus_dir / name)):
                    yield f"{name}:{i}", {"tokens": tokens.astype(np.int32), "source": source}

    return InternJaxCorpus


def build_tfds_dataset(corpus_dir, data_dir=None) -> Path:
    """Build the dataset into ``data_dir`` (default ``corpus_dir/tfds``); returns ``data_dir``."""
    data_dir = Path(data_dir or Path(corpus_dir) / "tfds")
    builder = _builder_class()(corpus_dir=corpus_dir, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return data_dir


def data_source(data_dir):
    """``{source: ArrayRecordDataSource}`` of a built dataset (random access, numpy, no TensorFlow)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    return tfds.data_source(DATASET_NAME, data_dir=str(data_dir))
