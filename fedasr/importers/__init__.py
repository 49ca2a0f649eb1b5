"""Importers of real speech corpora: LibriSpeech, Common Voice and plain manifests, as fedasr corpus folders.

Each importer writes the layout `make data` writes (`fedasr.data`), so every later step (seed training,
the ASR federated task, the notebooks) runs on it unchanged::

    DIR/corpus.json                 "source": {kind, path, utterances_in, utterances_kept, skipped}, config, sha256
    DIR/clients.json                one record per user client: id, seen, speaker, locale, new_terms, ...
    DIR/manifests/<split>.jsonl     proxy_train/dev/test, user_train, user_heldout(_dev), user_test, user_dev
    DIR/audio/<client>/<id>.flac    only audio that had to be converted to 16 kHz mono FLAC

Command line: ``python -m fedasr.importers {librispeech,commonvoice,manifest} SRC --out DIR [options]``; then
``python -m fedasr.importers configs --corpus DIR [--like quick]`` writes the seed, federated and quality configs
that point a profile's recipe at the corpus (`fedasr.importers.configs`).
Roles and splits: `fedasr.importers.roles`; checks: `fedasr.importers.common`.
"""

from fedasr.importers.common import ImportConfig, SourceError
from fedasr.importers.commonvoice import import_commonvoice
from fedasr.importers.configs import write_configs
from fedasr.importers.librispeech import import_librispeech
from fedasr.importers.manifest import import_manifest

__all__ = ["ImportConfig", "SourceError", "import_librispeech", "import_commonvoice", "import_manifest",
           "write_configs"]
