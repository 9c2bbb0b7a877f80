@component @algorithm-a @properties
Feature: Algorithm A on non-stationary signals agrees with the harness's own DSP
  Stationary whole-period test tones hide a DSP that looks at only part of a chunk, assumes whole
  periods or ignores a DC offset. Each scenario publishes ten seeded random chunks of one shape,
  each with its own sample rate (8–48 kHz), length (700–2400 frames), channels and encoding, and
  compares every Feature A with the harness's independent reference (a plain DFT written from
  the contract, harness::signal::reference_features) at the contract table's tolerances, checks
  the relations between its own fields (rms_dbfs = 20·log10 rms, peak ≥ rms, ranges, duration =
  frames / rate, dominant frequency and centroid within the band of the tones), and checks every
  Feature B against the Algorithm B table applied to its Feature A.

  Scenario Outline: Ten random chunks of <kind> match the reference, agree with themselves and are classified by the rules
    When sensor "prop" publishes 10 random chunks of <kind> with seed <seed>
    Then every Feature A for sensor "prop" matches the harness's reference features within the contract's tolerances
    And every Feature A for sensor "prop" is consistent in itself
    And every Feature B for sensor "prop" follows the contract's rules from its Feature A

    Examples:
      | kind                                | seed |
      | silence then a tone                 | 1201 |
      | a tone that stops mid-chunk         | 1202 |
      | a burst at the end                  | 1203 |
      | a tone of no whole number of periods | 1204 |
      | a tone over a DC offset             | 1205 |
      | tones within a band                 | 1206 |
