"""fedsentinel example: a Flower app on scikit-learn digits."""
