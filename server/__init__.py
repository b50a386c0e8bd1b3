"""The aggregation server.

- :mod:`server.round`: one round as a pure step, ``round_step(state, cohort, config)``
  (its data types in :mod:`server.round_state`); no I/O, no Flower.
- :mod:`server.aggregation`, :mod:`server.hierarchy_builder`: the pure DP-Lloyd step and the
  tree it publishes.
- :mod:`server.collectors` (with :mod:`server.replies`, :mod:`server.secagg`,
  :mod:`server.adapter_fedavg`): the Flower side, sending a round and collecting the cohort's
  sum (SecAgg+ or local mode) and the adapter's averaged update.
- :mod:`server.round_loop`: drives the rounds; :mod:`server.persistence`: the state read back
  and each round written once, at its end; :mod:`server.storage`: the SQLite database.
- :mod:`server.app`, :mod:`server.deploy`: the Flower ServerApp and the deployment helpers.
"""

__all__: list[str] = []
