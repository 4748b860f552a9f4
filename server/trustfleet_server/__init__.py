"""trustfleet operator side: keys, build and sign documents, publish, fleet state."""
