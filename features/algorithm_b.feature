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

  # The Algorithm B table (fixtures/contracts/README.md) at its boundaries, fed Feature A values
  # that DSP would only hit by chance. Confidence to 1e-9: each formula of the table, and the clamp.
  Scenario Outline: Class boundary: <case>
    When a Feature A for sensor "rule" with "<features>" is published to features_a
    Then the Feature B for sensor "rule" is <class> with confidence "<confidence> ± 0.000000001"
    And the Feature B for sensor "rule" follows the contract's rules from the Feature A published for it

    Examples:
      | case                                          | features                                                                                                    | class    | confidence |
      | just below -60 dBFS is silence                | features.rms_dbfs = -60.001; features.clipping_ratio = 0; features.spectral_flatness = 0.01                 | silence  | 0.500025   |
      | -60 dBFS itself is not silence                | features.rms_dbfs = -60; features.clipping_ratio = 0; features.spectral_flatness = 0                        | tone     | 1          |
      | -80 dBFS: full confidence                     | features.rms_dbfs = -80; features.clipping_ratio = 0; features.spectral_flatness = 0.5                      | silence  | 1          |
      | -120 dBFS: clamped to 1                       | features.rms_dbfs = -120; features.clipping_ratio = 0; features.spectral_flatness = 0                       | silence  | 1          |
      | silence wins over clipping                    | features.rms_dbfs = -70; features.clipping_ratio = 0.5; features.spectral_flatness = 0.5                    | silence  | 0.75       |
      | clipping exactly at 0.05                      | features.rms_dbfs = -3; features.clipping_ratio = 0.05; features.spectral_flatness = 0.01                   | clipping | 0.75       |
      | just below 0.05 is not clipping               | features.rms_dbfs = -3; features.clipping_ratio = 0.0499; features.spectral_flatness = 0.05                 | tone     | 0.875      |
      | clipping wins over tone                       | features.rms_dbfs = -1; features.clipping_ratio = 0.2; features.spectral_flatness = 0                       | clipping | 0.828947368 |
      | clipping from 0.525: clamped to 1             | features.rms_dbfs = -1; features.clipping_ratio = 0.9; features.spectral_flatness = 0.5                     | clipping | 1          |
      | flatness just below 0.2 is a tone             | features.rms_dbfs = -20; features.clipping_ratio = 0; features.spectral_flatness = 0.1999                   | tone     | 0.50025    |
      | flatness exactly 0.2 is noise                 | features.rms_dbfs = -20; features.clipping_ratio = 0; features.spectral_flatness = 0.2                      | noise    | 0.5        |
      | noise halfway                                 | features.rms_dbfs = -20; features.clipping_ratio = 0; features.spectral_flatness = 0.4                      | noise    | 0.75       |
      | noise from flatness 0.6: clamped to 1         | features.rms_dbfs = -20; features.clipping_ratio = 0; features.spectral_flatness = 0.9                      | noise    | 1          |

  Scenario Outline: A malformed Feature A is dead-lettered by Algorithm B with a reason, and no Feature B is made (<case>)
    When a Feature A for sensor "bad-a" with "<override>" is published to features_a
    Then the chunk from sensor "bad-a" is dead-lettered to "features_a.algorithm_b.dlq" with reason "<reason>"
    And no Feature B arrives for the broken message of sensor "bad-a" within 300 ms

    Examples:
      | case                         | override                                      | reason                     |
      | clipping_ratio above 1       | features.clipping_ratio = 1.5                 | schema_violation           |
      | negative spectral_flatness   | features.spectral_flatness = -0.1             | schema_violation           |
      | rms_dbfs as a string         | features.rms_dbfs = 'loud'                    | schema_violation           |
      | rms_dbfs above full scale    | features.rms_dbfs = 3                         | schema_violation           |
      | no rms_dbfs value            | features.rms_dbfs = null                      | schema_violation           |
      | schema version 2             | schema_version = 2                            | unsupported_schema_version |
      | a Feature B on features_a    | feature_type = 'B'                            | schema_violation           |
      | processed in the year 2999   | processed_at = '2999-01-01T00:00:00Z'         | timestamp_out_of_range     |
      | no source chunk              | source_message_id = 'not-a-uuid'              | schema_violation           |
