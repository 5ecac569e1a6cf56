//! The methods `credit.v1.CreditService` has, read from the compiled
//! descriptor set (the same one reflection serves), so the gate can tell a
//! method that does not exist from one the role table forgot.

use std::collections::HashSet;
use std::sync::LazyLock;

use prost::Message;
use prost_types::FileDescriptorSet;

static METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let Ok(set) = FileDescriptorSet::decode(credit_proto::FILE_DESCRIPTOR_SET) else {
        return HashSet::new();
    };
    set.file
        .iter()
        .filter(|f| f.package() == "credit.v1")
        .flat_map(|f| f.service.iter())
        .filter(|s| s.name() == "CreditService")
        .flat_map(|s| s.method.iter().map(|m| m.name().to_owned()))
        .collect()
});

/// Every method of the service.
#[cfg(test)]
pub fn all() -> impl Iterator<Item = &'static str> {
    METHODS.iter().map(String::as_str)
}

/// Whether the service has `method`.
pub fn exists(method: &str) -> bool {
    METHODS.contains(method)
}

#[cfg(test)]
mod tests {
    use crate::auth::required_role;

    /// The role table fails closed, so a method without an entry would be
    /// refused to everyone: every method of the service must have one.
    #[test]
    fn every_method_of_the_service_has_a_role() {
        let methods: Vec<&str> = super::all().collect();
        assert!(methods.len() >= 10, "descriptor read: {methods:?}");
        for method in methods {
            assert!(
                required_role(method).is_some(),
                "{method} has no role in auth::required_role"
            );
        }
        assert!(super::exists("Spend") && !super::exists("Nope"));
    }
}
