"""The demos: the offline walk-through and the fleet demo."""
