"""Simulation engines: how ``fedinterest simulate`` maps devices onto Flower nodes."""
