"""The naive prototype's gunicorn configuration: none, on purpose; bench/naive.py passes
every setting on the command line.

gunicorn reads `./gunicorn.conf.py` when no `-c` is given, and the prototype runs from the
repository root, where that file is Kassa's (its logging, worker sizing and hooks, and a
refusal to start without KASSA_DATABASE_URL). Passing this file instead keeps the baseline
a plain gunicorn + uvicorn worker, as bench/naive_server.py describes.
"""
