@component @algorithm-b
Feature: Algorithm B classifies each Feature A into an acoustic event
  Algorithm B consumes features_a through its own shared queue and publishes one Feature B
  per Feature A to the features_b fanout.

  Scenario Outline: <signal> is classified as <class>
    When sensor "s" publishes 1 chunk of <signal>
    Then Feature B for sensor "s" classifies the audio as <class> with confidence at least <confidence>
    And exactly 1 Feature B message arrives for sensor "s"

    Examples:
      | signal                          | class    | confidence |
      | silence                         | silence  | 0.99       |
      | 440 Hz sine at amplitude 0.5    | tone     | 0.9        |
      | 1000 Hz sine at amplitude 0.01  | tone     | 0.9        |
      | white noise at amplitude 0.5    | noise    | 0.7        |
      | 440 Hz sine clipped at gain 4   | clipping | 0.9        |
      | white noise at amplitude 0.0005 | silence  | 0.5        |

  Scenario: Feature B carries loudness and points at its Feature A
    When sensor "s" publishes 1 chunk of 440 Hz sine at amplitude 0.5
    Then Feature B for sensor "s" reports loudness_dbfs of "-9.03 ± 0.05"
    And Feature B for sensor "s" reports dominant_frequency_hz of "440 ± 2"
    And Feature B's feature_a_message_id for sensor "s" points at its Feature A
    And each Feature B for sensor "s" carries the lineage of its chunk

  Scenario: One Feature B per Feature A
    When sensor "s" publishes 6 chunks of white noise at amplitude 0.3
    Then exactly 6 Feature A messages arrive for sensor "s"
    And exactly 6 Feature B messages arrive for sensor "s"
    And every Feature B for sensor "s" names the instance that processed it

  Scenario: The DataWriter and the API get their own copies of each Feature B
    When sensor "s" publishes 1 chunk of 440 Hz sine at amplitude 0.5
    Then exactly 1 Feature B message arrives for sensor "s"
    And the database eventually holds 1 Feature B row for sensor "s"
    And the API eventually serves the latest Feature B of sensor "s" from its last chunk
