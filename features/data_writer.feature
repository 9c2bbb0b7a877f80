@component @data-writer
Feature: The DataWriter persists both feature types, idempotently
  Each Feature A and Feature B becomes one row in the features table (message_id UNIQUE).

  Scenario: Both feature types are stored with all their fields
    When sensor "mic" publishes 3 chunks of 440 Hz sine at amplitude 0.5
    Then the database eventually holds 3 Feature A rows for sensor "mic"
    And the database eventually holds 3 Feature B rows for sensor "mic"
    And the stored Feature A rows for sensor "mic" equal the published messages exactly
    And the stored Feature B rows for sensor "mic" equal the published messages exactly

  Scenario: A Feature message delivered twice is stored once
    When the same Feature A message for sensor "redelivered" is published to features_a twice
    Then the database holds exactly one row per Feature message of sensor "redelivered"

  # Contract 1.3: output ids derive from the input's, so both copies are one Feature A message.
  Scenario: A chunk published twice is stored once per feature type
    When sensor "dup" publishes the same chunk of 440 Hz sine at amplitude 0.5 twice
    Then exactly 2 Feature A messages arrive for sensor "dup"
    And the database holds exactly one row per Feature message of sensor "dup"
    And the database eventually holds 1 Feature A row for sensor "dup"
    And the database eventually holds 1 Feature B row for sensor "dup"

  Scenario: A Feature B whose Feature A never arrived is stored on its own
    When a Feature B for sensor "orphan" with "" is published to features_b
    Then the database eventually holds 1 Feature B row for sensor "orphan"
    And the database eventually holds 0 Feature A rows for sensor "orphan"

  Scenario Outline: A malformed Feature B is dead-lettered by the writer and stored nowhere (<case>)
    When a Feature B for sensor "bad-b" with "<override>" is published to features_b
    Then the chunk from sensor "bad-b" is dead-lettered to "features_b.data_writer.dlq" with reason "<reason>"
    And the database eventually holds 0 Feature B rows for sensor "bad-b"

    Examples:
      | case                    | override                                  | reason                     |
      | confidence below 0.5    | features.confidence = 0.3                 | schema_violation           |
      | an unknown event class  | features.event_class = 'music'            | schema_violation           |
      | sequence beyond BIGINT  | sequence = 9223372036854775808            | schema_violation           |
      | captured before 2000    | captured_at = '1999-12-31T23:59:59Z'      | timestamp_out_of_range     |
      | schema version 2        | schema_version = 2                        | unsupported_schema_version |
      | no Feature A id         | feature_a_message_id = null               | schema_violation           |

  Scenario Outline: Batch boundaries: <n> chunks in a row are all written
    When sensor "batch" publishes <n> chunks of white noise at amplitude 0.2
    Then the database eventually holds <n> Feature A rows for sensor "batch"
    And the database eventually holds <n> Feature B rows for sensor "batch"

    Examples:
      | n   |
      | 1   |
      | 99  |
      | 100 |
      | 101 |

  @writes-db
  Scenario: JSONB features round-trip exactly through the API
    Given 3 stored Feature A rows for sensor "seed" captured every 1 s from "2026-01-01T00:00:00Z"
    When I ask the API for seeded row 1 by its message id
    Then the response equals seeded row 1

  @writes-db
  Scenario Outline: Time ranges are from-inclusive and to-exclusive, in any time zone (<case>)
    Given 10 stored Feature A rows for sensor "tz" captured every 1 s from "2026-03-01T12:00:00Z"
    When I ask the API for the Feature A history of sensor "tz" from "<from>" to "<to>"
    Then the response lists exactly the seeded rows <first> to <last>

    Examples:
      | case              | from                      | to                        | first | last |
      | UTC               | 2026-03-01T12:00:02Z      | 2026-03-01T12:00:05Z      | 2     | 4    |
      | offset +02:00     | 2026-03-01T14:00:02+02:00 | 2026-03-01T14:00:05+02:00 | 2     | 4    |
      | offset -05:30     | 2026-03-01T06:30:00-05:30 | 2026-03-01T06:30:10-05:30 | 0     | 9    |
      | sub-second bounds | 2026-03-01T12:00:01.5Z    | 2026-03-01T12:00:03.000001Z | 2   | 3    |

  @writes-db
  Scenario: An empty window returns no rows
    Given 5 stored Feature A rows for sensor "tz" captured every 1 s from "2026-03-01T12:00:00Z"
    When I ask the API for the Feature A history of sensor "tz" from "2026-03-01T12:00:03Z" to "2026-03-01T12:00:03Z"
    Then the response lists 0 rows
