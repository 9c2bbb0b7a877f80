@integration @pipeline
Feature: The whole pipeline, stage by stage and end to end

  @smoke
  Scenario: A chunk travels from the sensor to the API
    When sensor "mic" publishes 1 chunk of 440 Hz sine at amplitude 0.5
    Then exactly 1 Feature A message arrives for sensor "mic"
    And Feature A for sensor "mic" reports dominant_frequency_hz of "440 ± 2"
    And exactly 1 Feature B message arrives for sensor "mic"
    And Feature B for sensor "mic" classifies the audio as tone with confidence at least 0.9
    And the database eventually holds 1 Feature A row for sensor "mic"
    And the database eventually holds 1 Feature B row for sensor "mic"
    And the API eventually serves the latest Feature A of sensor "mic" from its last chunk
    And the lineage of every chunk from sensor "mic" is complete

  Scenario: A stream of chunks is processed exactly once at every stage
    When sensor "stream" publishes 50 chunks of 440 Hz sine at amplitude 0.5
    Then every chunk from sensor "stream" yields exactly one Feature A and one Feature B
    And the database eventually holds 50 Feature A rows for sensor "stream"
    And the database eventually holds 50 Feature B rows for sensor "stream"

  Scenario: Concurrent sensors do not mix
    When sensor "left" publishes 5 chunks of 440 Hz sine at amplitude 0.5
    And sensor "right" publishes 5 chunks of white noise at amplitude 0.5
    Then Feature B for sensor "left" classifies the audio as tone with confidence at least 0.9
    And Feature B for sensor "right" classifies the audio as noise with confidence at least 0.7
    And the database eventually holds 5 Feature A rows for sensor "left"
    And the database eventually holds 5 Feature A rows for sensor "right"

  # Contract: "latest" is the greatest (captured_at, sequence, message_id), not the last to arrive.
  Scenario: Chunks arriving newest first: the API's latest is still the newest chunk
    When sensor "ooo" publishes 5 chunks of 440 Hz sine at amplitude 0.5 newest first
    Then the database eventually holds 5 Feature A rows for sensor "ooo"
    And the database eventually holds 5 Feature B rows for sensor "ooo"
    And the API eventually serves the latest Feature A of sensor "ooo" from its newest chunk
    And the API eventually serves the latest Feature B of sensor "ooo" from its newest chunk
    And the latest Feature A of sensor "ooo" from the API equals the newest stored row

  Scenario: A Feature A published by another producer flows on through Algorithm B to the database and the API
    When a Feature A for sensor "ext" with "" is published to features_a
    Then the Feature B for sensor "ext" follows the contract's rules from the Feature A published for it
    And the database eventually holds 1 Feature A row for sensor "ext"
    And the database eventually holds 1 Feature B row for sensor "ext"
    And the latest Feature B of sensor "ext" from the API equals the newest stored row

  @needs-sut-control
  Scenario Outline: <n> Algorithm A instances share the work queue, each chunk exactly once
    Given a private pipeline
    And <n> Algorithm A instances running with prefetch 1
    And 1 Algorithm B instance running
    When sensor "lb" publishes 60 chunks of 440 Hz sine at amplitude 0.5
    Then every chunk from sensor "lb" yields exactly one Feature A and one Feature B
    And the chunks of sensor "lb" were shared among all <n> Algorithm A instances

    Examples:
      | n |
      | 2 |
      | 3 |

  @needs-sut-control
  Scenario: Algorithm B scales out on its shared queue
    Given a private pipeline
    And 1 Algorithm A instance running
    And 1 Algorithm B instance running with prefetch 1
    When Algorithm B is scaled to 2 instances
    And sensor "bscale" publishes 40 chunks of white noise at amplitude 0.4
    Then every chunk from sensor "bscale" yields exactly one Feature A and one Feature B
    And the Feature B messages of sensor "bscale" were produced by 2 Algorithm B instances
