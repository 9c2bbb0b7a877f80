@fuzz
Feature: Hostile input
  Messages generated from the contract's schemas by mutation (fixtures/fuzz/operators.toml):
  every field missing, null, of the wrong type, at and past its bounds, with control and
  multi-byte characters across every length limit, odd numbers and timestamps, broken PCM,
  contradicting AMQP properties, and whole-message damage. Whatever arrives, the pipeline keeps
  flowing and stores and serves only what the contract allows. A failure names the seed, the
  minimal input, the stage, and the command that replays it.

  Scenario: Hostile audio chunks never stop the pipeline
    Given the hostile corpus of 240 inputs for the audio stream with seed 42
    When the hostile inputs are published in batches of 60, each followed by a canary chunk
    Then every hostile input was processed or dead-lettered once with a reason, the canaries got through, no service failed, and nothing stored or served breaks the contract

  Scenario: Hostile Feature A messages never stop the pipeline
    Given the hostile corpus of 180 inputs for the features_a fanout with seed 42
    When the hostile inputs are published in batches of 60, each followed by a canary chunk
    Then every hostile input was processed or dead-lettered once with a reason, the canaries got through, no service failed, and nothing stored or served breaks the contract

  Scenario: Hostile Feature B messages never stop the pipeline
    Given the hostile corpus of 180 inputs for the features_b fanout with seed 42
    When the hostile inputs are published in batches of 60, each followed by a canary chunk
    Then every hostile input was processed or dead-lettered once with a reason, the canaries got through, no service failed, and nothing stored or served breaks the contract
