//! Line numbers of field paths (`spec.rules[1].when[0].key`) in one YAML document, so that
//! validation errors point at the line to fix. Built from a marked event scan of the text;
//! used for messages only.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Field path -> 1-based line within the text that was scanned.
#[derive(Debug, Default)]
pub struct FieldLines(HashMap<String, usize>);

impl FieldLines {
    pub fn scan(text: &str) -> FieldLines {
        let mut recv = Receiver::default();
        // A scan error leaves what was found so far; the typed parse reports the error itself.
        let _ = Parser::new_from_str(text).load(&mut recv, false);
        FieldLines(recv.lines)
    }

    /// The line of exactly `field`.
    pub fn line_of_exact(&self, field: &str) -> Option<usize> {
        self.0.get(field).copied()
    }

    /// The line of `field`, or of its nearest parent that has one.
    pub fn line_of(&self, field: &str) -> Option<usize> {
        let mut f = field;
        loop {
            if let Some(l) = self.0.get(f) {
                return Some(*l);
            }
            let cut = f.rfind(['.', '['])?;
            f = &f[..cut];
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Receiver {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl MarkedEventReceiver for Receiver {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let is_node = matches!(
            ev,
            Event::Scalar(..)
                | Event::MappingStart(..)
                | Event::SequenceStart(..)
                | Event::Alias(..)
        );
        if is_node {
            let path = match self.stack.last_mut() {
                None => String::new(),
                Some(Frame::Map { path, key }) => match key.take() {
                    None => {
                        // This node is a key.
                        let name = match &ev {
                            Event::Scalar(v, ..) => v.clone(),
                            _ => "?".to_string(),
                        };
                        let full = join(path, &name);
                        self.lines.entry(full).or_insert(mark.line());
                        *key = Some(name);
                        if matches!(ev, Event::Scalar(..)) {
                            return;
                        }
                        // A complex key: scan into it under a throwaway path.
                        format!("{path}.?")
                    }
                    Some(k) => join(path, &k),
                },
                Some(Frame::Seq { path, index }) => {
                    let p = format!("{path}[{index}]");
                    *index += 1;
                    p
                }
            };
            self.lines.entry(path.clone()).or_insert(mark.line());
            match ev {
                Event::MappingStart(..) => self.stack.push(Frame::Map { path, key: None }),
                Event::SequenceStart(..) => self.stack.push(Frame::Seq { path, index: 0 }),
                _ => {}
            }
        } else if matches!(ev, Event::MappingEnd | Event::SequenceEnd) {
            self.stack.pop();
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lines_of_nested_fields() {
        let text = "kind: X\nspec:\n  rules:\n  - from:\n    - source: {principals: [a]}\n  - when:\n    - key: k\n      values: [v]\n";
        let l = FieldLines::scan(text);
        assert_eq!(l.line_of("kind"), Some(1));
        assert_eq!(l.line_of("spec.rules[0]"), Some(4));
        assert_eq!(
            l.line_of("spec.rules[0].from[0].source.principals[0]"),
            Some(5)
        );
        assert_eq!(l.line_of("spec.rules[1].when[0].key"), Some(7));
        assert_eq!(l.line_of("spec.rules[1].when[0].values[0]"), Some(8));
        assert_eq!(l.line_of("spec.selector.matchLabels[app]"), Some(2));
    }
}
