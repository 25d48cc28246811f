"""Next-frame models on image sequences: the moving-digit data and the user's own frames
(data, user_data), the Keras models (model), training (train, train_data), scoring
(evaluate, rollouts, recipe_ab) and the prediction figure (plots)."""
