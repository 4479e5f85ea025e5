//! Class names of the model and the optional class → label map.

use std::path::Path;

use anyhow::{bail, Context};

/// Class names in model output order: one per line (names may contain commas).
#[derive(Debug, Clone)]
pub struct ClassList {
    names: Vec<String>,
}

impl ClassList {
    pub fn load(path: &Path) -> anyhow::Result<ClassList> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read classes file {}", path.display()))?;
        ClassList::parse(&text).with_context(|| format!("bad classes file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<ClassList> {
        let names: Vec<String> = text.lines().map(|line| line.trim_end_matches('\r').to_string()).collect();
        if names.is_empty() {
            bail!("no class names");
        }
        if let Some(blank) = names.iter().position(|n| n.trim().is_empty()) {
            bail!("line {} is blank; expected one class name per line", blank + 1);
        }
        Ok(ClassList { names })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, index: usize) -> Option<&str> {
        self.names.get(index).map(String::as_str)
    }
}

/// Label of every class, from a CSV with columns `imagenet_index,imagenet_class,label`.
#[derive(Debug, Clone)]
pub struct LabelMap {
    labels: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
struct LabelRow {
    imagenet_index: usize,
    imagenet_class: String,
    label: String,
}

impl LabelMap {
    pub fn load(path: &Path, classes: &ClassList) -> anyhow::Result<LabelMap> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot read label map {}", path.display()))?;
        LabelMap::from_reader(file, classes).with_context(|| format!("bad label map {}", path.display()))
    }

    /// Every class must appear exactly once, under the same name as in the classes file (so a
    /// map made for another class list is refused rather than silently mislabelling).
    pub fn from_reader(reader: impl std::io::Read, classes: &ClassList) -> anyhow::Result<LabelMap> {
        let mut labels: Vec<Option<String>> = vec![None; classes.len()];
        let mut csv = csv::Reader::from_reader(reader);
        for (row_number, row) in csv.deserialize::<LabelRow>().enumerate() {
            let line = row_number + 2; // header is line 1
            let row = row.with_context(|| format!("line {line}"))?;
            let Some(expected) = classes.name(row.imagenet_index) else {
                bail!("line {line}: index {} is beyond the {} classes", row.imagenet_index, classes.len());
            };
            if row.imagenet_class != expected {
                bail!(
                    "line {line}: class {} is `{}` here but `{expected}` in the classes file",
                    row.imagenet_index,
                    row.imagenet_class
                );
            }
            if row.label.trim().is_empty() {
                bail!("line {line}: empty label");
            }
            let slot = &mut labels[row.imagenet_index];
            if slot.is_some() {
                bail!("line {line}: class {} appears twice", row.imagenet_index);
            }
            *slot = Some(row.label);
        }
        let missing: Vec<usize> = labels.iter().enumerate().filter(|(_, l)| l.is_none()).map(|(i, _)| i).collect();
        if !missing.is_empty() {
            bail!("{} classes have no label (first: {:?})", missing.len(), &missing[..missing.len().min(5)]);
        }
        Ok(LabelMap { labels: labels.into_iter().flatten().collect() })
    }

    pub fn label(&self, index: usize) -> Option<&str> {
        self.labels.get(index).map(String::as_str)
    }
}

/// Names a prediction: raw class name, and the mapped label (the class name without a map).
#[derive(Debug, Clone)]
pub struct Labeller {
    classes: ClassList,
    map: Option<LabelMap>,
}

impl Labeller {
    pub fn new(classes: ClassList, map: Option<LabelMap>) -> Labeller {
        Labeller { classes, map }
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    pub fn class_name(&self, index: usize) -> Option<&str> {
        self.classes.name(index)
    }

    pub fn label(&self, index: usize) -> Option<&str> {
        match &self.map {
            Some(map) => map.label(index),
            None => self.classes.name(index),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> ClassList {
        ClassList::parse("tench, Tinca tinca\ntabby, tabby cat\nliner, ocean liner\n").unwrap()
    }

    #[test]
    fn class_names_keep_their_commas() {
        let c = classes();
        assert_eq!(c.len(), 3);
        assert_eq!(c.name(1), Some("tabby, tabby cat"));
        assert_eq!(c.name(3), None);
        assert!(ClassList::parse("a\n\nb\n").is_err());
        assert!(ClassList::parse("").is_err());
    }

    #[test]
    fn label_map_is_validated_against_the_classes() {
        let good = "imagenet_index,imagenet_class,label\n0,\"tench, Tinca tinca\",other\n\
                    1,\"tabby, tabby cat\",cat\n2,\"liner, ocean liner\",ship\n";
        let map = LabelMap::from_reader(good.as_bytes(), &classes()).unwrap();
        let labeller = Labeller::new(classes(), Some(map));
        assert_eq!(labeller.label(1), Some("cat"));
        assert_eq!(labeller.class_name(1), Some("tabby, tabby cat"));

        let missing = "imagenet_index,imagenet_class,label\n0,\"tench, Tinca tinca\",other\n";
        assert!(LabelMap::from_reader(missing.as_bytes(), &classes()).unwrap_err().to_string().contains("no label"));
        let renamed = good.replace("\"tabby, tabby cat\"", "tabby");
        assert!(LabelMap::from_reader(renamed.as_bytes(), &classes()).is_err());
        let beyond = format!("{good}3,extra,other\n");
        assert!(LabelMap::from_reader(beyond.as_bytes(), &classes()).is_err());
    }

    #[test]
    fn without_a_map_the_label_is_the_class_name() {
        let labeller = Labeller::new(classes(), None);
        assert_eq!(labeller.label(2), Some("liner, ocean liner"));
    }
}
