"""r3: reasoning-guided video retrieval. A plain, typed library; it never imports Prefect."""

__version__ = "0.1.0"
