"""Reduced-precision passes: int8 quantization (dynamic and calibrated static) and float16 conversion.

These passes change numerics on purpose. They are registered as *approximate*:
the pipeline verifies them against the float original with an accuracy budget
(cosine similarity, largest error) instead of float32 closeness.
"""
