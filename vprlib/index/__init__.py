"""Indexing, evaluating and locating: trained retrievers' descriptors of a city's maps in faiss shards.

`jobs/index.py` builds or updates an index folder (vprlib.index.build), `vprlib.index.search.Index` searches it.
"""
