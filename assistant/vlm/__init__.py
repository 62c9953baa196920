"""3D vision-language core: preprocessing, the project's VLM, M3D-LaMed and multimodal backends, training data."""
