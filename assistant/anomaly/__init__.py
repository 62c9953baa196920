"""Unsupervised anomaly detection: how far a scan deviates from normal scans, where, and by how much."""

from assistant.anomaly.detector import DEFAULT_METHOD, SCREENING_METHODS, detect_anomalies, fit_normal_model, get_normal_model
from assistant.anomaly.methods import METHODS
from assistant.anomaly.result import AnomalyRegion, AnomalyResult

__all__ = ["DEFAULT_METHOD", "METHODS", "SCREENING_METHODS", "AnomalyRegion", "AnomalyResult", "detect_anomalies",
           "fit_normal_model", "get_normal_model"]
