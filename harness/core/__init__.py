"""The harness core: records, timing and plots shared by the GEdit and profile wings."""
