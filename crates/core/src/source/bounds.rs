//! Bounds on what an upstream can make us hold and show (docs/sources.md, "What an upstream
//! can make us hold"). Every string a decoder keeps passes through here: identifiers (chain,
//! addresses) must look like identifiers or the item is skipped; display strings (symbols,
//! the DEX id, labels) are capped in length and lose their invisible tricks. A control
//! character, a bidirectional override or a zero-width character is replaced by U+FFFD (�),
//! so that `US\u{200b}DC` shows as `US�DC`, never as `USDC`; a string over its cap is cut and
//! ends with `…`. Pure functions: no I/O, no clock.

use crate::model::{Snapshot, Token};

/// Characters of a token symbol kept (an upstream's symbols are rarely over 12).
pub const SYMBOL_CHARS: usize = 32;
/// Characters of a DEX id.
pub const DEX_ID_CHARS: usize = 32;
/// Labels kept per pair, and characters of each.
pub const LABELS: usize = 8;
pub const LABEL_CHARS: usize = 24;
/// Bytes of a chain id.
pub const CHAIN_BYTES: usize = 32;
/// Bytes of an address (pair or token): an EVM address is 42, a Solana one at most 44.
pub const ADDRESS_BYTES: usize = 128;
/// Bytes of a price as upstream wrote it (it is passed through to clients).
pub const PRICE_BYTES: usize = 64;
/// Characters of an upstream's error message we repeat in logs and readiness.
pub const MESSAGE_CHARS: usize = 200;

/// What stands for a character that could make one string look like another.
pub const REPLACEMENT: char = '\u{FFFD}';

/// Characters that are invisible or reorder what follows: controls, bidirectional marks,
/// overrides and isolates, zero-width spaces and joiners between letters, fillers.
fn deceptive(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' // soft hyphen
            | '\u{034F}' // combining grapheme joiner
            | '\u{061C}' // Arabic letter mark
            | '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' // Hangul fillers
            | '\u{17B4}' | '\u{17B5}' // Khmer invisible vowels
            | '\u{180E}' // Mongolian vowel separator
            | '\u{200B}' | '\u{200C}' | '\u{200E}' | '\u{200F}' // zero-width space/non-joiner, LRM, RLM
            | '\u{202A}'..='\u{202E}' // embeddings and overrides
            | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}' // isolates
            | '\u{FEFF}' // zero-width no-break space
            | '\u{FFF9}'..='\u{FFFB}' // interlinear annotations
        )
}

/// A display string from upstream: deceptive characters replaced, whitespace runs collapsed,
/// at most `max_chars` characters (the last one `…` when cut). `None` when nothing is left.
pub fn display(s: &str, max_chars: usize) -> Option<String> {
    let chars: Vec<char> = s.trim().chars().collect();
    let mut out = String::with_capacity(s.len().min(max_chars * 4));
    let mut n = 0;
    let mut space = false;
    for (i, &c) in chars.iter().enumerate() {
        // A zero-width joiner inside an emoji sequence is how the emoji is drawn; next to a
        // letter or digit it only hides itself.
        if c.is_whitespace() {
            space = true;
            continue;
        }
        let c = if c == '\u{200D}' {
            let near_text = |j: Option<usize>| {
                j.and_then(|j| chars.get(j))
                    .is_none_or(|c| c.is_alphanumeric() || c.is_ascii())
            };
            if near_text(i.checked_sub(1)) || near_text(Some(i + 1)) {
                REPLACEMENT
            } else {
                c
            }
        } else if deceptive(c) {
            REPLACEMENT
        } else {
            c
        };
        let extra = usize::from(space && n > 0);
        if n + extra + 1 > max_chars {
            // Cut: the last kept character becomes the ellipsis.
            if out.pop().is_some() {
                out.push('…');
            }
            return Some(out);
        }
        if extra == 1 {
            out.push(' ');
            n += 1;
        }
        space = false;
        out.push(c);
        n += 1;
    }
    (!out.is_empty()).then_some(out)
}

/// An identifier from upstream (chain id, address): ASCII letters, digits, `_`, `-` and `.`,
/// at most `max_bytes`. Anything else is not an identifier, and the item that carries it is
/// skipped rather than repaired: a pair key must mean one pair.
pub fn identifier(what: &'static str, s: &str, max_bytes: usize) -> Result<(), Rejected> {
    if s.is_empty() {
        return Err(Rejected::Empty(what));
    }
    if s.len() > max_bytes {
        return Err(Rejected::TooLong {
            what,
            bytes: s.len(),
            max_bytes,
        });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(Rejected::Characters(what));
    }
    Ok(())
}

/// Why an identifier from upstream is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("empty {0}")]
    Empty(&'static str),
    #[error("{what} of {bytes} bytes (at most {max_bytes})")]
    TooLong {
        what: &'static str,
        bytes: usize,
        max_bytes: usize,
    },
    #[error("{0} with characters other than letters, digits, `_`, `-` and `.`")]
    Characters(&'static str),
}

fn token(what: &'static str, t: Token) -> Result<Token, Rejected> {
    // An unknown token address stays empty (some upstream shapes omit it).
    if !t.address.is_empty() {
        identifier(what, &t.address, ADDRESS_BYTES)?;
    }
    Ok(Token {
        address: t.address,
        symbol: t.symbol.and_then(|s| display(&s, SYMBOL_CHARS)),
    })
}

/// A decoded snapshot within the bounds, or why its item is skipped.
pub fn snapshot(mut s: Snapshot) -> Result<Snapshot, Rejected> {
    identifier("chain id", &s.key.chain, CHAIN_BYTES)?;
    identifier("pair address", &s.key.address, ADDRESS_BYTES)?;
    s.base_token = token("base token address", std::mem::take(&mut s.base_token))?;
    s.quote_token = token("quote token address", std::mem::take(&mut s.quote_token))?;
    s.dex_id = s.dex_id.and_then(|d| display(&d, DEX_ID_CHARS));
    s.labels = std::mem::take(&mut s.labels)
        .iter()
        .filter_map(|l| display(l, LABEL_CHARS))
        .take(LABELS)
        .collect();
    // A price is passed through as written: a longer one is not a price we can vouch for.
    if s.price_usd
        .as_ref()
        .is_some_and(|p| p.raw.len() > PRICE_BYTES)
    {
        s.price_usd = None;
    }
    Ok(s)
}

/// An upstream's error message as we repeat it.
pub fn message(s: &str) -> String {
    display(s, MESSAGE_CHARS).unwrap_or_else(|| "(empty)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_strings_lose_their_tricks_and_their_length() {
        let check = |s: &str, max: usize, want: Option<&str>| {
            assert_eq!(display(s, max).as_deref(), want, "{s:?}");
        };
        check("USDC", 32, Some("USDC"));
        check("US\u{200b}DC", 32, Some("US\u{FFFD}DC"));
        check("\u{202e}CDSU", 32, Some("\u{FFFD}CDSU"));
        check("U\u{200d}SDC", 32, Some("U\u{FFFD}SDC"));
        check("a\u{0007}b\nc", 32, Some("a\u{FFFD}b c"));
        check("  two   words ", 32, Some("two words"));
        check("ABCDEFGHIJ", 5, Some("ABCD…"));
        check("ABCDE", 5, Some("ABCDE"));
        check("   ", 5, None);
        check("🐸", 5, Some("🐸"));
        // An emoji sequence keeps its joiner.
        check("👨\u{200d}👩", 5, Some("👨\u{200d}👩"));
        check("中文币", 32, Some("中文币"));
        let huge = "x".repeat(1 << 20);
        assert_eq!(
            display(&huge, SYMBOL_CHARS).unwrap().chars().count(),
            SYMBOL_CHARS
        );
    }

    #[test]
    fn identifiers_are_plain_and_short() {
        assert!(identifier("a", "So11111111111111111111111111111111111111112", 128).is_ok());
        assert!(identifier("a", "0xAbC", 128).is_ok());
        assert!(identifier("a", "wrap.near", 128).is_ok());
        let chars = Err(Rejected::Characters("a"));
        assert_eq!(identifier("a", "javascript:alert(7)", 128), chars);
        assert_eq!(identifier("a", "a b", 128), chars);
        assert_eq!(identifier("a", "", 128), Err(Rejected::Empty("a")));
        let long = identifier("pair address", &"x".repeat(129), 128).unwrap_err();
        assert_eq!(long.to_string(), "pair address of 129 bytes (at most 128)");
        assert_eq!(identifier("a", "é", 128), chars);
    }
}
