"""The fedinterest Flower app: thin entry points for ``flwr run``.

The package has its own name (not ``server`` or ``client``): Flower puts the app directory
first on ``sys.path``, and a folder named like an installed fedinterest package would shadow
it. The components only import the apps of the installed ``fedinterest`` distribution
(``fedinterest[server]`` on the SuperLink's machine, ``fedinterest[client]`` on each device).
"""

__all__: list[str] = []
