//! The one list of CloudTrail API operations (the 60 of the current service model). Routing,
//! authorization, metrics and self-audit all hang off this enum.

macro_rules! operations {
    ($( $name:ident ),* $(,)?) => {
        /// Every operation of CloudTrail 2013-11-01.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Operation { $( $name, )* }

        impl Operation {
            pub const ALL: &'static [Operation] = &[ $( Operation::$name, )* ];

            pub fn name(self) -> &'static str {
                match self { $( Self::$name => stringify!($name), )* }
            }
        }
    };
}

operations! {
    AddTags, CancelQuery, CreateChannel, CreateDashboard, CreateEventDataStore, CreateTrail,
    DeleteChannel, DeleteDashboard, DeleteEventDataStore, DeleteResourcePolicy, DeleteTrail,
    DeregisterOrganizationDelegatedAdmin, DescribeQuery, DescribeTrails, DisableFederation,
    EnableFederation, GenerateQuery, GetChannel, GetDashboard, GetEventConfiguration,
    GetEventDataStore, GetEventSelectors, GetImport, GetInsightSelectors, GetQueryResults,
    GetResourcePolicy, GetTrail, GetTrailStatus, ListChannels, ListDashboards, ListEventDataStores,
    ListImportFailures, ListImports, ListInsightsData, ListInsightsMetricData, ListPublicKeys,
    ListQueries, ListTags, ListTrails, LookupEvents, PutEventConfiguration, PutEventSelectors,
    PutInsightSelectors, PutResourcePolicy, RegisterOrganizationDelegatedAdmin, RemoveTags,
    RestoreEventDataStore, SearchSampleQueries, StartDashboardRefresh, StartEventDataStoreIngestion,
    StartImport, StartLogging, StartQuery, StopEventDataStoreIngestion, StopImport, StopLogging,
    UpdateChannel, UpdateDashboard, UpdateEventDataStore, UpdateTrail,
}

impl Operation {
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|op| op.name() == name)
    }

    /// Whether the operation only reads (CloudTrail records it with `readOnly: true`).
    pub fn is_read_only(self) -> bool {
        let n = self.name();
        ["Get", "Describe", "List", "Lookup", "Search"]
            .iter()
            .any(|p| n.starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixty_distinct_operations() {
        assert_eq!(Operation::ALL.len(), 60);
        for op in Operation::ALL {
            assert_eq!(Operation::from_name(op.name()), Some(*op));
        }
        assert!(Operation::LookupEvents.is_read_only());
        assert!(Operation::GetTrailStatus.is_read_only());
        assert!(!Operation::StopLogging.is_read_only());
        assert!(!Operation::CreateTrail.is_read_only());
    }
}
