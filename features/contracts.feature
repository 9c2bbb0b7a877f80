@contract
Feature: Every message on the bus honours the versioned contract
  The taps validate every captured message against fixtures/contracts/*.schema.json; these
  scenarios also check producer/consumer compatibility explicitly.

  Scenario: Feature A and Feature B messages match their schemas
    When sensor "c" publishes 3 chunks of 440 Hz sine at amplitude 0.5
    And sensor "c" publishes 2 chunks of silence
    Then exactly 5 Feature B messages arrive for sensor "c"
    And every message captured in this scenario matches its contract schema

  Scenario: A newer producer's extra optional field is tolerated
    When sensor "newer" publishes a chunk with an extra optional field "firmware_version"
    Then exactly 1 Feature A message arrives for sensor "newer"
    And nothing from sensor "newer" is dead-lettered within 300 ms

  Scenario: A Feature A without a required field is rejected to the consumers' DLQs
    When a Feature A message for sensor "older" without its required field "features" is published to features_a
    Then the chunk from sensor "older" is dead-lettered to "features_a.algorithm_b.dlq" with reason "schema_violation"
    And the chunk from sensor "older" is dead-lettered to "features_a.data_writer.dlq" with reason "schema_violation"
    And the chunk from sensor "older" is dead-lettered to "rest_api.dlq" with reason "schema_violation"
    And no Feature B arrives for the broken message of sensor "older" within 300 ms
