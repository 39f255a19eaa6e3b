"""The warm query service (`r3 serve`): models and pinned gallery versions held in one process, queries
answered over HTTP with the library's steps and no Prefect (docs/serving.md)."""
