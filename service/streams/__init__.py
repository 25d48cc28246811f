"""Streams: a ConvLSTM's hidden and cell state kept on the server between requests, so a
feed sending one new frame at a time pays one model step per frame instead of T.

``session.py`` runs a model's step graph (``model_export.export.step_graph``), ``batcher.py``
runs the steps of many streams as one batch, ``table.py`` keeps the streams (limits,
idle expiry), ``store.py`` and ``redis_store.py`` keep their state outside the process
(a snapshot directory, Redis), ``keeper.py`` is the one caller of a store (durability
``step`` or ``drain``), ``versions.py`` keeps each stream on the model version it
opened with across swaps, ``frames.py`` decodes a step's frames, and ``service.py`` joins
them for every protocol front (``/v1/streams``, the Open Inference Protocol's sequence
parameters, ``/predict``'s roll-out from state).
"""
