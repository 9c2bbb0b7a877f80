@load @pipeline
Feature: The pipeline keeps up with its sensors
  Chunks published at a steady rate reach the database within the latency budget, every one
  exactly once. Each scenario gets a private pipeline (its own broker namespace and database:
  2 Algorithm A, 1 Algorithm B, 1 DataWriter, 1 REST API). Latency is measured from each chunk's
  intended send time (corrected for coordinated omission) until both of its rows are visible.

  Scenario: Sensors publish at 300 chunks/s for 30 seconds
    Given sensors publish chunks at 300 chunks/s for 30 s through the pipeline
    Then the publish rate is at least 285 chunks/s
    And the sensor-to-database p99 is at most 50 ms corrected for coordinated omission
    And no chunk is lost
    And no row is duplicated
    And the services log no warning or error

  @smoke
  Scenario: Smoke: sensors publish at 50 chunks/s for 3 seconds
    Given sensors publish chunks at 50 chunks/s for 3 s through the pipeline
    Then the publish rate is at least 40 chunks/s
    And the sensor-to-database p99 is at most 2000 ms corrected for coordinated omission
    And no chunk is lost
    And no row is duplicated
