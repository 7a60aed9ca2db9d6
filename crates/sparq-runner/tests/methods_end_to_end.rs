//! Every compressed attention method decodes a long prompt on the default model,
//! alongside dense from one prefill, and gives text of its own.

mod common;

use sparq_attention::{AttentionMethod, MethodSpec};
use sparq_runner::generate;

#[test]
fn compressed_methods_decode_a_long_prompt_in_their_own_way() {
    let model = common::default_model();
    // About 900 tokens of plain prose, with numbers that make positions tell apart.
    let text: String = (1..=40)
        .map(|i| {
            format!(
                "Day {i}. The keeper of the lighthouse counted {} ships, wrote their names \
                 in the blue book, and trimmed the lamp before the storm came in. ",
                3 * i + 7
            )
        })
        .collect::<String>()
        + "Question: how many ships did the keeper count on day 17? Answer:";
    let prompt = model.tokenizer.encode(&text).unwrap();
    assert!(prompt.len() > 800, "{} prompt tokens", prompt.len());
    let specs = [
        "dense",
        "sparq:ratio=1/8",
        "h2o:k=64",
        "lminf:k=64",
        "flexgen:k=64",
        "oracle:k=64",
    ];
    let shape = model.model.shape();
    let methods: Vec<Box<dyn AttentionMethod>> = specs
        .iter()
        .map(|s| {
            s.parse::<MethodSpec>()
                .unwrap()
                .build(&shape, prompt.len())
                .unwrap()
        })
        .collect();
    let new_tokens = 16;
    let out = generate(&model.model, &prompt, methods, new_tokens).unwrap();
    let dense = &out.branches[0];
    let mut differ = 0;
    for (spec, b) in specs.iter().zip(&out.branches) {
        assert_eq!(b.tokens.len(), new_tokens, "{spec}");
        // The first token comes from the shared dense prefill.
        assert_eq!(b.tokens[0], dense.tokens[0], "{spec}");
        let text = model.tokenizer.decode(&b.tokens).unwrap();
        let distinct: std::collections::HashSet<_> = b.tokens.iter().collect();
        assert!(
            distinct.len() >= 4 && text.chars().any(|c| c.is_alphanumeric()),
            "{spec} degenerated: {text:?}"
        );
        if *spec != "dense" {
            // Fewer elements moved than dense, as SPEC section 4 counts them (the oracle's
            // selection is free, so it counts only its exact attention).
            let (e, de) = (
                b.elements_per_step.unwrap(),
                dense.elements_per_step.unwrap(),
            );
            assert!(e < de, "{spec}: {e} elements per step against dense's {de}");
            differ += usize::from(b.tokens != dense.tokens);
        }
    }
    assert!(
        differ >= 3,
        "only {differ} of 5 compressed methods decoded differently from dense"
    );
}
