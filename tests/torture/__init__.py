"""The torture suite: the real daemon against a real PostgreSQL while everything goes wrong.

Each scenario runs short in the default suite and long when opted in (SHIPPER_TORTURE=1, or
``-m torture``). A package (this file) so that its conftest and helpers never shadow tests/conftest.py.
"""
